"""A NUL character in the URL is answered before any query runs: no id or filter holds one.

PostgreSQL cannot compare a text column with a string holding NUL (`%00`): the query fails
with a DataError, a 500, where SQLite simply finds nothing. So a path with a NUL (every path
parameter is an id) answers 404 as an unknown id does on either database, and a query string
with one answers 422 naming the parameter; both as problem+json, both declared by every route
that takes such parameters. Checked once the key is known (`api/deps.py`), so a request
without a key is still a 401: two substring checks per request, nothing else read.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import Scope

from models.errors import GenqError, InvalidRequest


class NulInPath(GenqError):
    status = 404
    title = "Not found"
    type = "https://genq.dev/problems/not-found"


def refuse_nul_in_url(scope: Scope) -> None:
    """Raise NulInPath / InvalidRequest when the path / query string holds a NUL."""
    if "\x00" in scope["path"]:
        raise NulInPath("no resource has an id holding a NUL character (%00)")
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        raise InvalidRequest(_query_detail(query))


def _query_detail(query: bytes) -> str:
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    named = [name for name, value in pairs if "\x00" in value and "\x00" not in name]
    where = f"query parameter {named[0]!r}" if named else "the query string"
    return f"{where} holds a NUL character (%00)"
