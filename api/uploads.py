"""A multipart upload written to disk as it streams in: never the whole file in memory.

Starlette's form parser would spool the file to a temporary file first and the route would then
copy it; here python-multipart's streaming parser hands each piece of the `file` part straight
to the file's final place, counting its bytes against the limit, and keeps the small text
fields (`purpose`) in memory, capped.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from models.errors import InvalidRequest, PayloadTooLarge, UnparseableBody
from models.text_rules import without_controls

#: a text field of the form (`purpose`) is at most this long
MAX_FIELD_BYTES = 1024
#: form parts at most (the file, `purpose`, and a few an SDK may add)
MAX_PARTS = 16


@dataclass
class Upload:
    """What the form held: its text fields, and the file part's name and size as written."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0


class _Receiver:
    """The parser's callbacks: routes each part's bytes to the file or to a capped field."""

    def __init__(self, target: Path, max_bytes: int):
        self.target, self.max_bytes = target, max_bytes
        self.upload = Upload()
        self.handle: BinaryIO | None = None
        self.parts = 0
        self._header_name, self._header_value = b"", b""
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        #: the closing boundary arrived: a body cut short never counts as a whole file
        self.ended = False

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def end(self) -> None:
        self.ended = True

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidRequest(f"the form has more than {MAX_PARTS} parts")
        self._name, self._is_file = None, False
        self._buffer.clear()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            _, options = parse_options_header(self._header_value)
            self._name = options.get(b"name", b"").decode("utf-8", "replace")
            if self._name == "file":
                filename = options.get(b"filename", b"").decode("utf-8", "replace")
                filename = without_controls(filename)  # NUL cannot be stored; none is useful
                self._is_file = True
                self._open(os.path.basename(filename.replace("\\", "/")) or "upload.jsonl")
        self._header_name, self._header_value = b"", b""

    def _open(self, filename: str) -> None:
        if self.handle is not None:
            raise InvalidRequest("the form has more than one `file` part")
        self.upload.filename = filename[:512]
        self.handle = open(self.target, "wb")  # noqa: SIM115  (closed by finish/abandon)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file and self.handle is not None:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise PayloadTooLarge(
                    f"the file exceeds {self.max_bytes} bytes (GENQ_MAX_FILE_BYTES)"
                )
            self.handle.write(data[start:end])
        elif len(self._buffer) + end - start > MAX_FIELD_BYTES:
            raise InvalidRequest(f"form field {self._name!r} exceeds {MAX_FIELD_BYTES} bytes")
        else:
            self._buffer += data[start:end]

    def part_end(self) -> None:
        if not self._is_file and self._name:
            self.upload.fields[self._name] = self._buffer.decode("utf-8", "replace")


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise InvalidRequest("send the file as multipart/form-data (fields `file` and `purpose`)")
    return options[b"boundary"]


async def receive_upload(request: Request, *, target: Path, max_bytes: int) -> Upload:
    """Parse the multipart body, writing its `file` part to `target`; on any error nothing
    stays on disk."""
    receiver = _Receiver(target, max_bytes)
    parser = MultipartParser(_boundary(request), receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        if not receiver.ended:
            raise FormParserError("the body ends before the form's closing boundary")
    except FormParserError:
        _abandon(receiver)
        raise UnparseableBody("the multipart body is malformed") from None
    except BaseException:
        _abandon(receiver)
        raise
    if receiver.handle is None:
        raise InvalidRequest("the form has no `file` part")
    receiver.handle.close()
    return receiver.upload


def _abandon(receiver: _Receiver) -> None:
    if receiver.handle is not None:
        receiver.handle.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(receiver.target)
