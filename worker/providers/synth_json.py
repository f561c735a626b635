"""Deterministic instances of a JSON Schema, for the offline simulator's structured answers.

Covers what product-page and tagging schemas use: objects (properties, required,
additionalProperties), arrays (items, prefixItems, minItems/maxItems, uniqueItems), enum,
const, strings (minLength/maxLength, the common formats), numbers and integers (minimum,
maximum, exclusive bounds, multipleOf), booleans, null, type lists, anyOf/oneOf (the first
branch), allOf (merged), local `$ref`s (`#/$defs/…`, `#/definitions/…`). Not `pattern`: a
string under a pattern is only as valid as luck makes it. Free strings carry the synthetic label.
"""

from __future__ import annotations

import math
import random
from typing import Any

SYNTHETIC = "[synthetic]"
#: how deep $refs may recurse before the generator stops following optional branches
MAX_DEPTH = 12
FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "12:00:00Z",
    "duration": "P1D",
    "email": "synthetic@example.com",
    "idn-email": "synthetic@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/synthetic",
    "iri": "https://example.com/synthetic",
    "uri-reference": "/synthetic",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
WORDS = "synthetic bright fresh simple clear bold green calm warm honest".split()


class Synth:
    """One generator over one root schema (for `$ref` resolution), seeded by the prompt."""

    def __init__(self, root: dict[str, Any], rng: random.Random):
        self.root = root
        self.rng = rng

    def instance(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, dict) or depth > MAX_DEPTH * 2:
            return None
        schema = self._resolve(schema)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if schema.get(key):
                return self.instance(schema[key][0], depth + 1)
        if schema.get("allOf"):
            return self.instance(_merge(schema, [self._resolve(s) for s in schema["allOf"]]), depth)
        kind = _type_of(schema)
        maker = getattr(self, f"_{kind}", None)
        return maker(schema, depth) if maker else None

    def _resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        target: Any = self.root
        for part in filter(None, ref[1:].split("/")):
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return {**target, **rest} if isinstance(target, dict) else rest

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        keep = [k for k in properties if k in required or depth < MAX_DEPTH]
        result = {k: self.instance(properties[k], depth + 1) for k in keep}
        for k in required - set(result):  # required without a property schema
            result[k] = SYNTHETIC
        for index in range(max(0, int(schema.get("minProperties", 0)) - len(result))):
            extra = schema.get("additionalProperties")
            result[f"synthetic_{index}"] = self.instance(extra, depth + 1) if extra else SYNTHETIC
        return result

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        low = int(schema.get("minItems", 0))
        high = schema.get("maxItems")
        count = max(low, len(prefix), 1 if depth < MAX_DEPTH else 0)
        if high is not None:
            count = min(count, int(high))
        items = [self.instance(s, depth + 1) for s in prefix[:count]]
        item = schema.get("items")
        for index in range(len(items), count):
            value = self.instance(item, depth + 1) if isinstance(item, dict) else SYNTHETIC
            if schema.get("uniqueItems"):
                value = _distinct(value, index, items)
            items.append(value)
        return items

    def _string(self, schema: dict[str, Any], depth: int) -> str:
        if schema.get("format") in FORMATS:
            return FORMATS[schema["format"]]
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        words = " ".join(self.rng.choice(WORDS) for _ in range(3 + self.rng.randrange(6)))
        text = f"{SYNTHETIC} {words}"
        if len(text) < low:
            text = text + "x" * (low - len(text))
        return text if high is None else text[: int(high)]

    def _integer(self, schema: dict[str, Any], depth: int) -> int:
        low, high = _bounds(schema, integer=True)
        value = low if low is not None else (0 if high is None or high >= 0 else high)
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            value = math.ceil(value / step) * step
        return int(value)

    def _number(self, schema: dict[str, Any], depth: int) -> float:
        low, high = _bounds(schema, integer=False)
        if low is not None and high is not None:
            middle = round((low + high) / 2, 2)
            return middle if low <= middle <= high else (low + high) / 2
        if low is not None:
            return low + 1 if "exclusiveMinimum" in schema else low
        if high is not None:
            return min(high - 1, 0.0)
        return 1.5

    def _boolean(self, schema: dict[str, Any], depth: int) -> bool:
        return True

    def _null(self, schema: dict[str, Any], depth: int) -> None:
        return None


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"
    return kind


def _bounds(schema: dict[str, Any], *, integer: bool) -> tuple[float | None, float | None]:
    """The inclusive lower and upper bounds the schema allows."""
    low, high = schema.get("minimum"), schema.get("maximum")
    epsilon = 1 if integer else 1e-6
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        low = schema["exclusiveMinimum"] + epsilon
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        high = schema["exclusiveMaximum"] - epsilon
    if integer:
        low = None if low is None else math.ceil(low)
        high = None if high is None else math.floor(high)
    return low, high


def _merge(schema: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in parts:
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _distinct(value: Any, index: int, taken: list[Any]) -> Any:
    """Make a repeated string or number unique (uniqueItems)."""
    if value not in taken:
        return value
    if isinstance(value, str):
        return f"{value} {index}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value + index
    return value


def instance_of(schema: dict[str, Any], rng: random.Random) -> Any:
    """A value valid under `schema` (within the coverage the module docstring lists)."""
    return Synth(schema, rng).instance(schema)
