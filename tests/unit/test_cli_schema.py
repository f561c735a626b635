"""`genq submit --schema FILE` and how the CLI shows a structured answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cli.main import _show
from cli.schema_file import response_format, schema_name


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("page.json", "page"),
        ("product page.schema.json", "product_page_schema"),
        ("ü-tags.json", "_-tags"),
        ("x" * 80 + ".json", "x" * 64),
    ],
)
def test_schema_name_comes_from_the_file_stem(filename, name):
    assert schema_name(Path(filename)) == name


def test_a_schema_file_becomes_a_strict_json_schema_format(tmp_path):
    path = tmp_path / "page.json"
    path.write_text('{"type": "object", "required": ["title"]}')
    assert response_format(path) == {
        "type": "json_schema",
        "json_schema": {
            "name": "page",
            "schema": {"type": "object", "required": ["title"]},
            "strict": True,
        },
    }


@pytest.mark.parametrize(("content", "needle"), [("{nope", "not JSON"), ("[1]", "JSON object")])
def test_a_bad_schema_file_is_one_clear_error(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=needle):
        response_format(path)


def test_a_terminal_gets_the_summary_then_the_json_pretty_on_stdout(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    job = {
        "id": "j1",
        "kind": "text",
        "status": "succeeded",
        "model": "gpt-4o-mini",
        "attempts": 1,
        "cost_usd": 0.0001,
        "output": {
            "text": '{"title": "Kettle"}',
            "finish_reason": "stop",
            "json": {"title": "Kettle"},
        },
    }
    _show(job, json_out=False)
    out, err = capsys.readouterr()
    summary, pretty = out.split("\n{\n", 1)
    assert "succeeded" in summary and json.loads("{\n" + pretty) == {"title": "Kettle"}
    assert out.endswith('{\n  "title": "Kettle"\n}\n') and err == ""
