"""Flower's command-line options, checked and written the one way Flower reads them.

Flower parses its options with tornado, which only reads `--name=value`: `--port 5556` made it
fail with a long traceback, and an unknown option was silently dropped. Here both forms are
accepted and turned into `--name=value`; anything Flower would not take is refused in one line.
"""

from __future__ import annotations

import copy

#: tornado's spellings of a boolean value
BOOLEANS = ("true", "false", "1", "0", "yes", "no", "t", "f", "y", "n")


class FlowerOptionError(ValueError):
    """An option Flower does not know, or a value it cannot read."""


def _known() -> dict:
    import flower.options  # noqa: F401 (defines Flower's options in tornado's registry)
    from tornado.options import options

    return options._options  # the registry: name (with dashes) -> option


def normalise(args: list[str]) -> list[str]:
    """`--port 5556 --debug` -> `--port=5556 --debug`; raises FlowerOptionError on bad input."""
    known, result, rest = _known(), [], list(args)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--") or arg == "--":
            raise FlowerOptionError(f"unexpected argument {arg!r}: Flower options are --name=value")
        name, has_value, value = arg[2:].partition("=")
        option = known.get(name.replace("_", "-"))
        if option is None:
            raise FlowerOptionError(f"Flower has no option --{name} (see `celery flower --help`)")
        if option.type is bool and not has_value:
            result.append(f"--{name}")
            continue
        if not has_value:
            if not rest or rest[0].startswith("--"):
                raise FlowerOptionError(f"--{name} needs a value (--{name}=VALUE)")
            value = rest.pop(0)
        result.append(f"--{name}={_checked(name, option, value)}")
    return result


def _checked(name: str, option, value: str) -> str:
    """The value as given, once Flower's own parser accepts it (on a copy: no side effect)."""
    if option.type is bool and value.lower() not in BOOLEANS:
        raise FlowerOptionError(f"--{name} is true or false, not {value!r}")
    if option.type not in (str, int, float, bool):
        raise FlowerOptionError(f"--{name} can only be set in a Flower config file (--conf)")
    try:
        copy.copy(option).parse(value)
    except Exception:  # tornado raises its Error or the type's own ValueError
        kind = option.type.__name__
        raise FlowerOptionError(f"--{name}: {value!r} is not a valid {kind}") from None
    return value
