"""`genq submit --schema FILE`: a JSON Schema file as a strict `json_schema` response format."""

from __future__ import annotations

import json
import re
from pathlib import Path

#: OpenAI's schema names: letters, digits, `_` and `-`, at most 64
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")


def schema_name(path: Path) -> str:
    """The file's stem as a schema name (`product page.json` → `product_page`)."""
    return _NOT_IN_NAME.sub("_", path.stem)[:64] or "schema"


def response_format(path: Path) -> dict:
    """The `response_format` for a schema file; ValueError with one line saying what is wrong."""
    try:
        schema = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"--schema {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"--schema {path}: not JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise ValueError(f"--schema {path}: a JSON Schema is a JSON object")
    return {
        "type": "json_schema",
        "json_schema": {"name": schema_name(path), "schema": schema, "strict": True},
    }
