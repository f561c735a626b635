"""JSON text whose money is plain JSON numbers: `"cost_usd": 0.0000258`, never `2.58e-05`.

Python's json and pydantic write small floats with an exponent (`7.8e-05`, `1e-7`) and a
Decimal as a string. Here the fast encoders stay in charge (every job response goes through
them) and write each amount as a string holding a marker and the amount's plain digits; the
marked strings are then turned into bare numbers. The marker holds 128 random bits made at
start-up and never sent anywhere, so no string in the data can carry it.
"""

from __future__ import annotations

import json
import secrets
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, PlainSerializer, SerializationInfo, WithJsonSchema

from models.money import money

_MARKER = f"\x00genq-money-{secrets.token_hex(16)}:"
#: the marker as both encoders write it inside a JSON string (NUL escaped as \u0000)
_QUOTED = json.dumps(_MARKER)[:-1]
#: serialisation context under which MoneyNumber fields write marked amounts
_PLAIN = {"genq_plain_money": True}


def _marked(value: Decimal) -> str:
    return _MARKER + money(value)


def _unmark(text: str) -> str:
    """Each `"<marker>0.0000258"` becomes `0.0000258`."""
    if _QUOTED not in text:
        return text
    head, *rest = text.split(_QUOTED)
    return head + "".join(part.replace('"', "", 1) for part in rest)


def _serialise(value: Decimal, info: SerializationInfo) -> Decimal | float | str:
    if not info.mode_is_json():
        return value
    return _marked(value) if info.context == _PLAIN else float(value)


#: a USD amount in a response model: a Decimal in Python, a JSON number in the schema and, through
#: `model_json`, a plain-notation number on the wire
MoneyNumber = Annotated[Decimal, PlainSerializer(_serialise), WithJsonSchema({"type": "number"})]


def model_json(model: BaseModel) -> str:
    """A response model as compact JSON (pydantic's own fast encoder), money in plain digits."""
    return _unmark(model.model_dump_json(context=_PLAIN))


def _default(value: Any) -> str:
    if isinstance(value, Decimal):
        return _marked(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: built once (json.dumps builds an encoder on every call); compact as FastAPI writes it
_COMPACT = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default
)
_INDENTED = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=2, default=_default)


def dumps(data: Any, *, indent: bool = False) -> str:
    """Any JSON-ready data (dicts, lists, Decimals…) as JSON text; Decimals as plain numbers."""
    return _unmark((_INDENTED if indent else _COMPACT).encode(data))


def loads(text: str | bytes) -> Any:
    """JSON whose numbers with a fraction or an exponent are read as Decimal (exact money)."""
    return json.loads(text, parse_float=Decimal)
