"""Token counting with tiktoken, fully offline.

tiktoken downloads its encodings on first use. The `bpe-openai` package ships the same official
files (gzipped); we unpack them into tiktoken's cache under the name tiktoken looks for, and
tiktoken still checks their sha256 on load.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path

import tiktoken

#: where tiktoken would download each encoding from; its cache key is the sha1 of this URL
ENCODING_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
#: OpenAI's chat format adds 3 tokens per message and 3 to prime the reply
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def install_encodings(cache_dir: Path) -> Path:
    """Make tiktoken find its encodings in `cache_dir` without any network access."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, url in ENCODING_URLS.items():
        target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
        if target.exists():
            continue
        packed = resources.files("bpe_openai.data").joinpath(f"{name}.tiktoken.gz").read_bytes()
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress(packed))
        tmp.replace(target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return cache_dir


@lru_cache
def encoding(name: str) -> tiktoken.Encoding:
    """A cached tiktoken encoding (call `install_encodings` first)."""
    return tiktoken.get_encoding(name)


def count_text(text: str, encoding_name: str = "o200k_base") -> int:
    """Tokens in a plain string."""
    return len(encoding(encoding_name).encode(text, disallowed_special=()))


def count_messages(messages: list[dict[str, str]], encoding_name: str = "o200k_base") -> int:
    """Prompt tokens of a chat request, counted the way OpenAI bills them."""
    enc = encoding(encoding_name)
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for value in message.values():
            total += len(enc.encode(value, disallowed_special=()))
    return total
