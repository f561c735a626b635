"""What an image's bytes really are: the type from magic numbers (or an `<svg>` root), and its size.

A provider's word (`output_format`, a URL's extension, a `Content-Type`) is not trusted: the bytes
decide what genq stores and serves. Raster sizes come from Pillow (which reads only the header);
an SVG's from its root's `width` / `height` (plain or `px` numbers), else its `viewBox`, else
unknown.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from xml.etree.ElementTree import ParseError, XMLPullParser

from PIL import Image, UnidentifiedImageError

from models.errors import PermanentProviderError

INVALID_IMAGE = "invalid_image"
SVG = "image/svg+xml"
#: (magic prefix, offset, MIME type), checked in order
MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),  # after b"RIFF" and the chunk size
)
#: an SVG's root must start within this many bytes (XML declaration, comments, doctype before it)
SVG_HEAD_BYTES = 65_536
#: what Pillow raises for bytes it cannot read (or will not: a decompression bomb)
UNREADABLE = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
)
LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(px)?\s*$")


class InvalidImage(PermanentProviderError):
    """The provider's answer is not an image genq can store: retrying would not change it."""

    def __init__(self, detail: str):
        super().__init__(detail, kind=INVALID_IMAGE)


@dataclass(frozen=True, kw_only=True)
class Sniffed:
    content_type: str
    width: int | None
    height: int | None


def sniff(data: bytes) -> Sniffed:
    """The real type and size of `data`; InvalidImage naming why when it is not an image."""
    if not data:
        raise InvalidImage("the provider returned an empty image")
    for magic, offset, content_type in MAGIC:
        if data[offset : offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return _raster(data, content_type)
    if _looks_like_xml(data):
        return _svg(data)
    raise InvalidImage(
        f"the provider's image is not PNG, JPEG, WebP, GIF or SVG (starts {data[:8]!r})"
    )


def _raster(data: bytes, content_type: str) -> Sniffed:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            img.verify()  # checks structure (e.g. PNG chunk CRCs) without decoding pixels
    except UNREADABLE as exc:
        raise InvalidImage(f"the provider's {content_type} image is unreadable: {exc}") from None
    return Sniffed(content_type=content_type, width=width, height=height)


def _looks_like_xml(data: bytes) -> bool:
    head = data[:SVG_HEAD_BYTES].removeprefix(b"\xef\xbb\xbf").lstrip()
    return head.startswith(b"<")


def _svg(data: bytes) -> Sniffed:
    """The root element decides: `<svg>` (any namespace prefix) with its size attributes."""
    root = _root_element(data[:SVG_HEAD_BYTES])
    if root is None or root.tag.rpartition("}")[2].rpartition(":")[2] != "svg":
        found = "no root element" if root is None else f"root element <{root.tag}>"
        raise InvalidImage(f"the provider's XML image is not SVG ({found})")
    width, height = _length(root.get("width")), _length(root.get("height"))
    if width is None or height is None:
        width, height = _viewbox(root.get("viewBox"))
    return Sniffed(content_type=SVG, width=width, height=height)


def _root_element(head: bytes):
    """The first element's start tag, parsed without reading (or expanding) the rest."""
    parser = XMLPullParser(events=("start",))
    try:
        parser.feed(head)
        for _event, element in parser.read_events():
            return element
    except ParseError:
        return None
    return None


def _length(value: str | None) -> int | None:
    """`512`, `512px`, `512.0` → 512; percentages and other units say nothing of pixels."""
    match = LENGTH.match(value or "")
    return round(float(match.group(1))) if match else None


def _viewbox(value: str | None) -> tuple[int | None, int | None]:
    parts = (value or "").replace(",", " ").split()
    try:
        width, height = (float(p) for p in parts[2:4]) if len(parts) == 4 else (0.0, 0.0)
    except ValueError:
        return None, None
    return (round(width), round(height)) if width > 0 and height > 0 else (None, None)
