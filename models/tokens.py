"""Token counting with tiktoken, fully offline.

tiktoken downloads its encodings on first use. The `bpe-openai` package ships the same official
files (gzipped); we unpack them into tiktoken's cache under the name tiktoken looks for, and
tiktoken still checks their sha256 on load.
"""

from __future__ import annotations

import gzip
import hashlib
import json
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
#: OpenAI's cookbook approximation of function definitions (gpt-4o family, "How to count tokens
#: with tiktoken"): per function, per properties block, per property, per enum, per enum item,
#: and once after all of them
FUNC_INIT, PROP_INIT, PROP_KEY, ENUM_INIT, ENUM_ITEM, FUNC_END = 7, 3, 3, -3, 3, 12
#: a tool call in an assistant message: its id, type and the JSON around name and arguments
TOKENS_PER_TOOL_CALL = 10
#: response_format json_schema: OpenAI publishes no rule; the compact schema text plus its name
#: and a small frame is our estimate (an overestimate is safer for the worst-case cost)
RESPONSE_FORMAT_FRAME = 10


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


def count_messages(messages: list[dict], encoding_name: str = "o200k_base") -> int:
    """Prompt tokens of a chat request, counted the way OpenAI bills them."""
    enc = encoding(encoding_name)
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for value in message.values():
            if isinstance(value, str):
                total += len(enc.encode(value, disallowed_special=()))
            elif isinstance(value, list):  # an assistant's tool_calls
                total += _tool_calls(value, enc)
    return total


def _tool_calls(calls: list[dict], enc: tiktoken.Encoding) -> int:
    total = 0
    for call in calls:
        function = call.get("function") or {}
        text = f"{function.get('name', '')}{function.get('arguments', '')}"
        total += TOKENS_PER_TOOL_CALL + len(enc.encode(text, disallowed_special=()))
    return total


def _count(enc: tiktoken.Encoding, text: str) -> int:
    return len(enc.encode(text, disallowed_special=()))


def _property_tokens(name: str, prop: dict, enc: tiktoken.Encoding) -> int:
    """One parameter as the cookbook counts it: `name:type:description`, enum items; nested
    objects and arrays (which the cookbook leaves out) as their compact JSON."""
    total = PROP_KEY
    if "enum" in prop:
        total += ENUM_INIT
        for item in prop["enum"]:
            total += ENUM_ITEM + _count(enc, str(item))
    description = str(prop.get("description", "")).removesuffix(".")
    total += _count(enc, f"{name}:{prop.get('type', '')}:{description}")
    nested = {k: v for k, v in prop.items() if k in ("properties", "items", "anyOf", "$ref")}
    if nested:
        total += _count(enc, json.dumps(nested, separators=(",", ":")))
    return total


def count_tools(tools: list[dict], encoding_name: str = "o200k_base") -> int:
    """Prompt tokens the function definitions add (OpenAI's cookbook approximation)."""
    if not tools:
        return 0
    enc = encoding(encoding_name)
    total = FUNC_END
    for tool in tools:
        function = tool.get("function") or {}
        description = str(function.get("description") or "").removesuffix(".")
        total += FUNC_INIT + _count(enc, f"{function.get('name', '')}:{description}")
        properties = (function.get("parameters") or {}).get("properties") or {}
        if properties:
            total += PROP_INIT
            total += sum(_property_tokens(k, v, enc) for k, v in properties.items())
    return total


def count_response_format(response_format: dict | None, encoding_name: str = "o200k_base") -> int:
    """Prompt tokens a `json_schema` response format adds (our approximation, see above)."""
    if not response_format or response_format.get("type") != "json_schema":
        return 0
    spec = response_format.get("json_schema") or {}
    text = spec.get("name", "") + json.dumps(spec.get("schema", {}), separators=(",", ":"))
    return RESPONSE_FORMAT_FRAME + _count(encoding(encoding_name), text)


def count_request(messages: list[dict], params: dict, encoding_name: str = "o200k_base") -> int:
    """Prompt tokens of a whole chat request: messages, function definitions, output schema."""
    total = count_messages(messages, encoding_name)
    if "tools" in params or "response_format" in params:
        total += count_tools(params.get("tools") or [], encoding_name)
        total += count_response_format(params.get("response_format"), encoding_name)
    return total
