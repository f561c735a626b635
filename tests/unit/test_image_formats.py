"""Sniffing an image's real type and size from its bytes, whatever the provider called it."""

from __future__ import annotations

import pytest

from tests.fake_images import GIF, JPEG, PNG, WEBP
from worker.image_fetch import decode_data_url
from worker.image_formats import InvalidImage, sniff

NS = 'xmlns="http://www.w3.org/2000/svg"'


@pytest.mark.parametrize(
    ("data", "content_type", "size"),
    [
        (PNG, "image/png", (64, 48)),
        (JPEG, "image/jpeg", (40, 30)),
        (WEBP, "image/webp", (20, 10)),
        (GIF, "image/gif", (16, 12)),
        (f'<svg {NS} width="10.4" height="20"/>'.encode(), "image/svg+xml", (10, 20)),
        # a BOM, a comment and a doctype before a namespace-prefixed root
        (
            b"\xef\xbb\xbf  <!-- made by a gateway --><!DOCTYPE svg>"
            b'<s:svg xmlns:s="http://www.w3.org/2000/svg" viewBox="0,0,64,32"/>',
            "image/svg+xml",
            (64, 32),
        ),
        # sizes in units that say nothing of pixels: the viewBox decides, else unknown
        (
            f'<svg {NS} width="100%" height="5cm" viewBox="0 0 8 6"/>'.encode(),
            "image/svg+xml",
            (8, 6),
        ),
        (f'<svg {NS} width="100%" height="50%"/>'.encode(), "image/svg+xml", None),
    ],
)
def test_types_and_sizes_come_from_the_bytes(data, content_type, size):
    found = sniff(data)
    assert found.content_type == content_type
    assert (found.width, found.height) == (size or (None, None))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"GIF87a", "unreadable"),  # the right magic number and nothing after it
        (PNG[: len(PNG) // 2], "unreadable"),  # cut short
        (b"%PDF-1.7 not an image", "not PNG, JPEG, WebP, GIF or SVG"),
        (b"<svg unclosed", "not SVG (no root element)"),
        (b'<?xml version="1.0"?><feed/>', "not SVG (root element <feed>)"),
    ],
)
def test_anything_else_is_refused_naming_why(data, reason):
    with pytest.raises(InvalidImage) as refused:
        sniff(data)
    assert reason in refused.value.detail and refused.value.kind == "invalid_image"


def test_data_urls_decode_base64_and_percent_encoding():
    assert decode_data_url("data:image/gif;base64,R0lGODdh") == b"GIF87a"
    assert decode_data_url("data:,%3Csvg%2F%3E") == b"<svg/>"
    with pytest.raises(InvalidImage, match="not valid base64"):
        decode_data_url("data:image/png;base64,@@@@")
    with pytest.raises(InvalidImage, match="no ','"):
        decode_data_url("data:image/png;base64")
