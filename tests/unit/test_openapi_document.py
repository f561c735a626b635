"""The OpenAPI document itself: valid OpenAPI 3.1, and every route declares its problem statuses.

The rules here are the ones api/openapi.py states; a new route that forgets its
`problem_responses(...)` fails them. The live API is checked against the document in
tests/e2e/test_schemathesis.py.
"""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from schemathesis.specs.openapi.definitions import OPENAPI_31

from api.main import create_app
from api.openapi import PROBLEM_MEDIA_TYPE, PROBLEM_REF
from models.schemas import JobCreate
from models.settings import Settings

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@pytest.fixture(scope="module")
def app(encodings_dir):
    settings = Settings(
        _env_file=None,
        database_url="sqlite://",
        provider="offline",
        tiktoken_cache_dir=encodings_dir,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def document(app) -> dict:
    return app.openapi()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield f"{method.upper()} {path}", operation


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    # The official OpenAPI 3.1 schema (as schemathesis ships it) accepts the document
    errors = sorted(Draft202012Validator(OPENAPI_31).iter_errors(document), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    # and every component is a valid JSON Schema 2020-12 schema whose references resolve
    for component in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(component)
    for reference in _references(document):
        name = reference.removeprefix("#/components/schemas/")
        assert name in document["components"]["schemas"], reference


def test_every_route_is_in_the_document(app, document):
    documented = {label for label, _ in operations(document)}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods:
                assert f"{method} {route.path}" in documented


def test_every_error_status_is_problem_json_and_nothing_else(document):
    for label, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"] == {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}}, (
                    label,
                    status,
                )
                assert response["description"], (label, status)


def test_every_route_declares_the_statuses_its_inputs_can_cause(document):
    for label, operation in operations(document):
        declared = set(operation["responses"])
        if operation.get("security"):  # behind the API key, checked against the database
            assert {"401", "503"} <= declared, label
        if "requestBody" in operation:  # unparseable, too large, invalid
            assert {"400", "413", "422"} <= declared, label
        if any(_can_be_invalid(p) for p in operation.get("parameters", [])):
            assert "422" in declared, label
        assert "422" not in declared or _has_inputs(operation), label
        assert any(s.startswith("2") for s in declared), label


def test_the_v1_routes_say_they_need_the_bearer_key(document):
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    for label, operation in operations(document):
        needs_key = label.split(" ")[1].startswith("/v1/")
        assert bool(operation.get("security")) == needs_key, label


def test_the_problem_schema_describes_what_genq_sends(document):
    problem = document["components"]["schemas"]["Problem"]
    validator = Draft202012Validator(problem)
    sent = {
        "type": "https://genq.dev/problems/invalid-request",
        "title": "Invalid request",
        "status": 422,
        "detail": "kind: Field required",
        "errors": [{"loc": ["body", "jobs", 0, "kind"], "msg": "Field required"}],
    }
    assert validator.is_valid(sent)
    assert validator.is_valid({"type": "about:blank", "title": "Bad", "status": 400, "detail": "x"})
    assert not validator.is_valid({"title": "Bad", "status": 400, "detail": "x"})
    assert not validator.is_valid({**sent, "status": 200})


USER = {"role": "user", "content": "hi"}
BODIES = [
    {"kind": "text", "prompt": "hi"},
    {"kind": "text", "messages": [USER]},
    {"kind": "image", "prompt": "a red fox", "params": {"size": "1024x1024", "n": 2}},
    {"kind": "text", "prompt": "hi", "messages": None},
    {"kind": "text", "prompt": None, "messages": [USER]},
    {"kind": "text"},
    {"kind": "text", "prompt": None},
    {"kind": "text", "prompt": "hi", "messages": [USER]},
    {"kind": "image", "messages": [USER]},
    {"kind": "image", "prompt": "fox", "messages": [USER]},
    {"kind": "text", "prompt": ""},
    {"kind": "text", "messages": []},
    {"kind": "video", "prompt": "hi"},
    {"kind": "text", "prompt": "hi", "colour": "red"},
    {"kind": "text", "prompt": "hi", "metadata": {str(i): i for i in range(32)}},
    {"kind": "text", "prompt": "hi", "metadata": {str(i): i for i in range(33)}},
    {"kind": "text", "prompt": "hi", "deadline_s": 0},
    {"kind": "text", "prompt": "hi", "policy": {"tier": "cheap"}},
    {"kind": "text", "prompt": "hi", "policy": {"max_cost_usd": 0}},
    {"kind": "text", "prompt": "hi", "params": {"temperature": 2.5}},
    {"kind": "text", "prompt": "hi", "params": {"max_tokens": 0}},
    {"kind": "text", "prompt": "hi", "params": {"size": "1024x1024"}},
    {"kind": "text", "prompt": "hi", "params": {"max_tokens": 50, "top_p": 0.5}},
    {"kind": "image", "prompt": "fox", "params": {"max_tokens": 50}},
    {"kind": "image", "prompt": "fox", "params": {"n": 0}},
]


def server_accepts(body: dict) -> bool:
    """The validators a submit runs before planning: the body, then its params by kind."""
    try:
        job = JobCreate.model_validate(body)
        job.text_params() if job.kind == "text" else job.image_params()
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("body", BODIES, ids=[str(i) for i in range(len(BODIES))])
def test_the_job_request_schema_says_what_the_validators_enforce(document, body):
    # Given the JobCreate schema of the document (with its references)
    validator = validator_for(document, "JobCreate")
    # Then it accepts a body exactly when genq's validators do
    assert validator.is_valid(body) == server_accepts(body), body


def test_a_batch_is_one_to_100_jobs_each_a_job_request(document):
    validator = validator_for(document, "JobBatchCreate")
    assert validator.is_valid({"jobs": [{"kind": "text", "prompt": "hi"}] * 100})
    assert not validator.is_valid({"jobs": []})
    assert not validator.is_valid({"jobs": [{"kind": "text", "prompt": "hi"}] * 101})
    assert not validator.is_valid({"jobs": [{"kind": "text", "prompt": "a", "messages": [USER]}]})


def _can_be_invalid(parameter: dict) -> bool:
    """A parameter FastAPI can refuse: a constrained one, or a required one that may be left out."""
    schema = parameter.get("schema", {})
    plain = ({"type": "string"}, {"type": "null"})
    constrained = any(_bare(variant) not in plain for variant in schema.get("anyOf", [schema]))
    return constrained or (parameter.get("required", False) and parameter["in"] != "path")


def _bare(schema: dict) -> dict:
    return {k: v for k, v in schema.items() if k not in ("title", "description", "default")}


def _has_inputs(operation: dict) -> bool:
    return "requestBody" in operation or any(
        _can_be_invalid(p) for p in operation.get("parameters", [])
    )


def _references(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _references(value)]
    if isinstance(node, list):
        return [r for value in node for r in _references(value)]
    return []


def validator_for(document: dict, name: str) -> Draft202012Validator:
    """A validator of one component; its `#/components/schemas/...` references resolve."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return Draft202012Validator(root)
