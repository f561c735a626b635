"""Image answers as OpenAI-compatible servers give them: base64, a `data:` URL, or a link.

A link (DALL·E's default, many gateways') expires within the hour, so the worker downloads it at
once, in the attempt that got it: with a size cap, a total timeout, only the allowed schemes, and
no credentials of genq's (a separate client: the provider's key never goes to the image host).
Such links often carry a signature in their query or path, so neither logs nor error messages ever
show one: only its host. A failed download (timeout, connection error, 5xx, 429, a body cut short)
is retryable like a failed model call; a 4xx, an over-cap body or a refused scheme is permanent.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import structlog

from models.errors import PermanentProviderError, RetryableProviderError
from models.settings import Settings, parse_schemes
from worker.image_formats import InvalidImage, sniff
from worker.providers.base import GeneratedImage

log = structlog.get_logger("genq.worker")
DOWNLOAD_FAILED, TOO_LARGE, URL_REFUSED = (
    "image_download_failed",
    "image_too_large",
    "image_url_refused",
)
#: download answers worth another attempt (any other 4xx will not change)
RETRYABLE_DOWNLOAD_STATUSES = frozenset({408, 425, 429})
MAX_REDIRECTS = 5
_downloading = threading.local()


class _HostOnly(logging.Filter):
    """httpx logs each request's URL (at DEBUG here): during a download, show only its host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_downloading, "active", False) and isinstance(record.args, tuple):
            record.args = tuple(
                host_of(str(arg)) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_HostOnly())


def host_of(url: str) -> str:
    """What of a URL may be shown: its host (never its path, query or user info)."""
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def decode_base64(text: str, *, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"the provider's {what} is not valid base64") from None


def decode_data_url(url: str) -> bytes:
    """`data:[type][;base64],payload`, base64 or percent-encoded (RFC 2397)."""
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise InvalidImage("the provider's data: URL has no ',' before its data")
    if header.lower().split(";")[-1].strip() == "base64":
        return decode_base64(unquote_to_bytes(payload).decode("ascii", "replace"), what="data: URL")
    return unquote_to_bytes(payload)


class ImageFetcher:
    """Turns one item of an images answer into stored bytes of a sniffed type."""

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float,
        schemes: frozenset[str],
        transport: httpx.BaseTransport | None = None,
    ):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.schemes = schemes
        self.client = httpx.Client(
            timeout=timeout_s,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            event_hooks={"request": [self._allowed]},  # redirects are checked too
            transport=transport,
            trust_env=False,  # no proxy credentials or .netrc of the worker's environment
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        return cls(
            max_bytes=settings.image_download_max_bytes,
            timeout_s=settings.image_download_timeout_s,
            schemes=parse_schemes(settings.image_url_schemes),
        )

    def load(self, *, b64_json: str | None, url: str | None) -> GeneratedImage:
        """The image of one answer item, whichever form it came in."""
        if b64_json:
            data = decode_base64(b64_json, what="b64_json")
        elif url and url[:5].lower() == "data:":
            data = decode_data_url(url)
        elif url:
            data = self.download(url)
        else:
            raise InvalidImage("the provider's answer has neither b64_json nor url")
        found = sniff(data)
        return GeneratedImage(
            data=data, width=found.width, height=found.height, content_type=found.content_type
        )

    def _allowed(self, request: httpx.Request) -> None:
        if request.url.scheme not in self.schemes:
            allowed = ",".join(sorted(self.schemes))
            raise PermanentProviderError(
                f"image URL scheme {request.url.scheme!r} of host {host_of(str(request.url))} "
                f"is not allowed (GENQ_IMAGE_URL_SCHEMES={allowed})",
                kind=URL_REFUSED,
            )

    def download(self, url: str) -> bytes:
        """The body at `url`, read now and whole, within the cap and the total timeout."""
        host = host_of(url)
        started = time.monotonic()
        _downloading.active = True
        try:
            data = self._get(url, host, deadline=started + self.timeout_s)
        except httpx.TimeoutException:
            raise self._retryable(f"image download from {host} timed out") from None
        except httpx.TooManyRedirects:
            raise PermanentProviderError(
                f"image download from {host}: more than {MAX_REDIRECTS} redirects",
                kind=DOWNLOAD_FAILED,
            ) from None
        except httpx.RequestError as exc:  # connection refused or reset, body cut short, …
            reason = type(exc).__name__  # never str(exc): it may quote the URL
            raise self._retryable(f"image download from {host} failed: {reason}") from None
        except httpx.InvalidURL:
            raise PermanentProviderError(
                "the provider's image URL is not a valid URL", kind=URL_REFUSED
            ) from None
        finally:
            _downloading.active = False
        log.info(
            "image.downloaded",
            host=host,
            bytes=len(data),
            ms=round((time.monotonic() - started) * 1000),
        )
        return data

    def _get(self, url: str, host: str, *, deadline: float) -> bytes:
        with self.client.stream("GET", url) as response:
            self._check_status(response.status_code, host)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large(host)
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > self.max_bytes:
                    raise self._too_large(host)
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("total download time exceeded")
        return bytes(body)

    def _check_status(self, status: int, host: str) -> None:
        if status < 400:
            return
        message = f"image download from {host} answered HTTP {status}"
        if status >= 500 or status in RETRYABLE_DOWNLOAD_STATUSES:
            raise self._retryable(message)
        raise PermanentProviderError(message, kind=DOWNLOAD_FAILED)

    def _too_large(self, host: str) -> PermanentProviderError:
        return PermanentProviderError(
            f"image from {host} is larger than {self.max_bytes} bytes "
            "(GENQ_IMAGE_DOWNLOAD_MAX_BYTES)",
            kind=TOO_LARGE,
        )

    @staticmethod
    def _retryable(message: str) -> RetryableProviderError:
        return RetryableProviderError(message, kind=DOWNLOAD_FAILED)
