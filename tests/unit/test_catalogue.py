"""models/catalogue.py: the built-in price list, overrides from a file, and clear errors."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from models.catalogue import ModelSpec, load_catalogue
from models.errors import CatalogueError
from models.jsontext import dumps, loads

D = Decimal

#: id -> (kind, tier, input, cached input, output, context window, max output)
TEXT_MODELS = {
    "gpt-4o-mini": ("economy", D("0.15"), D("0.075"), D("0.60"), 128_000, 16_384),
    "gpt-4o": ("premium", D("2.50"), D("1.25"), D("10.00"), 128_000, 16_384),
    "gpt-4.1": ("premium", D("2.00"), D("0.50"), D("8.00"), 1_047_576, 32_768),
    "gpt-4.1-mini": ("balanced", D("0.40"), D("0.10"), D("1.60"), 1_047_576, 32_768),
    "gpt-4.1-nano": ("economy", D("0.10"), D("0.025"), D("0.40"), 1_047_576, 32_768),
}
#: id -> (tier, max images, prompt limit, {quality: {size: USD}})
IMAGE_MODELS = {
    "dall-e-2": (
        "economy",
        10,
        1000,
        {"standard": {"256x256": D("0.016"), "512x512": D("0.018"), "1024x1024": D("0.020")}},
    ),
    "dall-e-3": (
        "premium",
        1,
        4000,
        {
            "standard": {"1024x1024": D("0.04"), "1024x1792": D("0.08"), "1792x1024": D("0.08")},
            "hd": {"1024x1024": D("0.08"), "1024x1792": D("0.12"), "1792x1024": D("0.12")},
        },
    ),
    "gpt-image-1": (
        "balanced",
        10,
        32000,
        {
            "low": {"1024x1024": D("0.011"), "1024x1536": D("0.016"), "1536x1024": D("0.016")},
            "medium": {"1024x1024": D("0.042"), "1024x1536": D("0.063"), "1536x1024": D("0.063")},
            "high": {"1024x1024": D("0.167"), "1024x1536": D("0.25"), "1536x1024": D("0.25")},
        },
    ),
}

GOOD_EXTRA = """
[models."gpt-4o-mini"]
kind = "text"
tier = "economy"
input_per_1m = 0.20
cached_input_per_1m = 0.10
output_per_1m = 0.80
context_window = 64000
max_output_tokens = 4096

[models."local-llama"]
kind = "text"
tier = "economy"
provider = "openai-compatible"
context_window = 8192
max_output_tokens = 2048
encoding = "cl100k_base"
"""


@pytest.fixture(scope="module")
def builtin():
    return load_catalogue()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "extra-catalogue.toml"
    path.write_text(text)
    return path


def test_builtin_catalogue_has_exactly_the_documented_models(builtin):
    assert sorted(m.id for m in builtin) == sorted([*TEXT_MODELS, *IMAGE_MODELS])


@pytest.mark.parametrize("model_id", sorted(TEXT_MODELS))
def test_builtin_text_model(builtin, model_id):
    tier, inp, cached, out, context, max_out = TEXT_MODELS[model_id]
    spec = builtin.get(model_id)
    assert spec is not None
    assert (spec.kind, spec.tier, spec.provider) == ("text", tier, "openai")
    assert (spec.input_per_1m, spec.cached_input_per_1m, spec.output_per_1m) == (inp, cached, out)
    assert (spec.context_window, spec.max_output_tokens) == (context, max_out)
    assert spec.encoding == "o200k_base"
    for price in (spec.input_per_1m, spec.cached_input_per_1m, spec.output_per_1m):
        assert type(price) is Decimal


@pytest.mark.parametrize("model_id", sorted(IMAGE_MODELS))
def test_builtin_image_model(builtin, model_id):
    tier, max_images, prompt_limit, prices = IMAGE_MODELS[model_id]
    spec = builtin.get(model_id)
    assert spec is not None
    assert (spec.kind, spec.tier, spec.max_images) == ("image", tier, max_images)
    assert spec.context_window == prompt_limit
    assert spec.image_prices == prices
    default = {"dall-e-2": "standard", "dall-e-3": "standard", "gpt-image-1": "medium"}
    assert spec.quality_or_default(None) == default[model_id]
    assert all(type(p) is Decimal for q in spec.image_prices.values() for p in q.values())


def test_prices_are_exact_decimals_not_floats(builtin):
    # 0.075 has no exact binary float; a float round trip would show up in the digits
    spec = builtin.get("gpt-4o-mini")
    assert str(spec.cached_input_per_1m) == "0.075"
    assert spec.cached_input_per_1m * 3 == D("0.225")


@pytest.mark.parametrize(
    ("model_id", "size", "quality", "expected"),
    [
        ("dall-e-3", "1024x1024", None, D("0.040")),
        ("dall-e-3", "1024x1024", "hd", D("0.080")),
        ("dall-e-3", "256x256", None, None),
        ("dall-e-3", "1024x1024", "ultra", None),
        ("dall-e-2", "256x256", None, D("0.016")),
        ("gpt-image-1", "1536x1024", "high", D("0.25")),
    ],
)
def test_image_price_lookup(builtin, model_id, size, quality, expected):
    assert builtin.get(model_id).image_price(size, quality) == expected


def test_sizes_are_unique_and_in_catalogue_order(builtin):
    assert builtin.get("dall-e-3").sizes == ["1024x1024", "1024x1792", "1792x1024"]


def test_contains_and_unknown(builtin):
    assert "gpt-4o" in builtin
    assert "gpt-5-ultra" not in builtin
    assert builtin.get("gpt-5-ultra") is None


def test_extra_file_overrides_one_entry_and_adds_one(tmp_path, builtin):
    # Given a file that redefines gpt-4o-mini and adds local-llama
    path = write(tmp_path, GOOD_EXTRA)
    # When the catalogue is loaded with it
    catalogue = load_catalogue(path)
    # Then the override wins, the addition exists, and every other built-in is untouched
    mini = catalogue.get("gpt-4o-mini")
    assert (mini.input_per_1m, mini.output_per_1m, mini.context_window) == (
        D("0.20"),
        D("0.80"),
        64_000,
    )
    llama = catalogue.get("local-llama")
    assert (llama.provider, llama.encoding, llama.input_per_1m) == (
        "openai-compatible",
        "cl100k_base",
        D(0),
    )
    assert sorted(m.id for m in catalogue) == sorted([*TEXT_MODELS, *IMAGE_MODELS, "local-llama"])
    for spec in builtin:
        if spec.id != "gpt-4o-mini":
            assert catalogue.get(spec.id) == spec


def test_model_spec_is_frozen(builtin):
    with pytest.raises(ValueError):
        builtin.get("gpt-4o").input_per_1m = D(0)  # type: ignore[misc]


def test_public_view_is_json_ready(builtin):
    public = builtin.get("gpt-4o-mini").public()
    assert public["id"] == "gpt-4o-mini"
    assert public["input_per_1m"] == D("0.15")
    assert '"input_per_1m":0.15,' in dumps(public) and loads(dumps(public)) == public


BROKEN = {
    "bad toml": ('[models."x"\nkind = "text"\n', None),
    "no models table": ('[model."x"]\nkind = "text"\n', "[models.<id>]"),
    "missing kind": (
        '[models."my-model"]\ntier = "economy"\ncontext_window = 10\nmax_output_tokens = 5\n',
        "kind",
    ),
    "negative price": (
        '[models."my-model"]\nkind = "text"\ntier = "economy"\ncontext_window = 100\n'
        "max_output_tokens = 5\ninput_per_1m = -0.5\n",
        "input_per_1m",
    ),
    "text without max_output_tokens": (
        '[models."my-model"]\nkind = "text"\ntier = "economy"\ncontext_window = 100\n',
        "max_output_tokens",
    ),
    "image without prices": (
        '[models."my-model"]\nkind = "image"\ntier = "economy"\ncontext_window = 100\n',
        "image_prices",
    ),
    "unknown field": (
        '[models."my-model"]\nkind = "text"\ntier = "economy"\ncontext_window = 100\n'
        "max_output_tokens = 5\nprice = 1\n",
        "price",
    ),
    "unknown tier": (
        '[models."my-model"]\nkind = "text"\ntier = "cheap"\ncontext_window = 100\n'
        "max_output_tokens = 5\n",
        "tier",
    ),
}
#: cases whose error comes from validating one entry (the rest are file-level)
ENTRY_ERRORS = [name for name in BROKEN if name not in ("bad toml", "no models table")]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_raises_catalogue_error_naming_the_problem(tmp_path, case):
    # Given a broken extra catalogue file
    text, needle = BROKEN[case]
    path = write(tmp_path, text)
    # When it is loaded
    with pytest.raises(CatalogueError) as info:
        load_catalogue(path)
    # Then the message names the model and the field (or the TOML problem)
    message = str(info.value)
    if case in ENTRY_ERRORS:
        assert "my-model" in message
    assert needle is None or needle in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["bad toml", "no models table"])
def test_file_level_error_names_the_file(tmp_path, case):
    path = write(tmp_path, BROKEN[case][0])
    with pytest.raises(CatalogueError, match=re.escape(str(path))):
        load_catalogue(path)


@pytest.mark.parametrize("case", ENTRY_ERRORS)
def test_entry_error_names_the_file(tmp_path, case):
    path = write(tmp_path, BROKEN[case][0])
    with pytest.raises(CatalogueError, match=re.escape(str(path))):
        load_catalogue(path)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(CatalogueError, match=re.escape(str(path))):
        load_catalogue(path)


def test_model_spec_rules_without_a_file():
    with pytest.raises(ValueError, match="max_output_tokens"):
        ModelSpec(id="t", kind="text", tier="economy", context_window=10)
    with pytest.raises(ValueError, match="image_prices"):
        ModelSpec(id="i", kind="image", tier="economy", context_window=10)


def test_entry_error_names_the_line_of_the_entry(tmp_path):
    path = tmp_path / "extra.toml"
    path.write_text(
        '# extra models\n\n[models."ok"]\nkind = "text"\ntier = "economy"\n'
        "context_window = 10\nmax_output_tokens = 5\n\n"
        '[models."broken"]\nkind = "text"\ntier = "economy"\ncontext_window = -1\n'
        "max_output_tokens = 5\n"
    )
    with pytest.raises(
        CatalogueError, match=r"extra\.toml, line 9: model 'broken': context_window"
    ):
        load_catalogue(path)


def test_default_quality_must_be_a_priced_quality(tmp_path):
    path = tmp_path / "extra.toml"
    path.write_text(
        '[models."img"]\nkind = "image"\ntier = "economy"\ncontext_window = 100\n'
        'default_quality = "ultra"\n[models."img".image_prices.standard]\n'
        '"256x256" = 0.01\n'
    )
    with pytest.raises(CatalogueError, match="default_quality"):
        load_catalogue(path)
