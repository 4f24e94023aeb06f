"""The OpenAPI schema: valid, public, and complete about scopes and errors."""

from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db

SCOPES = {
    ("/api/v1/calls/", "get"): "calls:read",
    ("/api/v1/calls/", "post"): "calls:write",
    ("/api/v1/calls/{call_id}/", "get"): "calls:read",
    ("/api/v1/calls/{call_id}/end/", "post"): "calls:write",
    ("/api/v1/calls/{call_id}/invitations/", "post"): None,
    ("/api/v1/ice-servers/", "get"): "ice:issue",
    ("/api/v1/relays/", "get"): "relays:admin",
    ("/api/v1/relays/", "post"): "relays:admin",
    ("/api/v1/relays/{name}/", "get"): "relays:admin",
    ("/api/v1/relays/{name}/", "patch"): "relays:admin",
    ("/api/v1/relays/{name}/", "delete"): "relays:admin",
    ("/api/v1/relays/{name}/probe/", "post"): "relays:admin",
    ("/api/v1/relays/{name}/drain/", "post"): "relays:admin",
    ("/api/v1/relays/explain/", "get"): None,
    ("/api/v1/relays/failures/", "post"): None,
    ("/api/v1/relays/gather/", "post"): None,
    ("/api/v1/network-tests/", "get"): None,
    ("/api/v1/network-tests/", "post"): None,
    ("/api/v1/fleet/paths/", "get"): "relays:admin",
    ("/api/v1/tickets/", "post"): "users:write",
    ("/api/v1/users/", "post"): "users:write",
    ("/api/v1/users/{external_id}/", "get"): "users:write",
    ("/api/v1/users/{external_id}/", "delete"): "users:write",
    ("/api/v1/webhooks/", "get"): "webhooks",
    ("/api/v1/webhooks/", "post"): "webhooks",
    ("/api/v1/webhooks/{webhook_id}/", "get"): "webhooks",
    ("/api/v1/webhooks/{webhook_id}/", "patch"): "webhooks",
    ("/api/v1/webhooks/{webhook_id}/", "delete"): "webhooks",
    ("/api/v1/whoami/", "get"): "*",
}


@pytest.fixture(scope="module")
def schema(django_db_blocker, tmp_path_factory):
    out = tmp_path_factory.mktemp("schema") / "schema.yaml"
    with django_db_blocker.unblock():
        call_command("spectacular", "--file", str(out), "--validate", "--fail-on-warn")
    return yaml.safe_load(out.read_text())


def test_every_operation_names_its_scope_and_its_errors(schema):
    found = {}
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            found[(path, method)] = op["x-traverse-scope"]
            for status in ("400", "401", "403", "404", "429"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (path, method, status)
    assert found == SCOPES
    assert set(schema["components"]["securitySchemes"]) >= {"apiKey", "deviceToken"}


def test_the_schema_and_docs_need_no_sign_in(client):
    assert client.get("/api/v1/schema/").status_code == 200
    assert client.get("/api/v1/docs/").status_code == 200
    assert client.get("/api/v1/redoc/").status_code == 200


def test_the_docs_scope_table_matches_the_schema(schema):
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "integrators.md").read_text()
    for (path, method), scope in SCOPES.items():
        if scope and scope != "*":
            assert f"| `{method.upper()} {path}` | `{scope}` |" in doc, (path, method)


def test_request_bodies_are_json_or_a_form_never_multipart(schema):
    """Daphne's HTTP layer (Twisted) parses a multipart body itself before the app sees it, and
    answers one it can't parse with a bare 400: no JSON error, no Content-Type. The API takes
    no files, so it takes no multipart bodies, and says so."""
    types = {
        media
        for path in schema["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "requestBody" in op
        for media in op["requestBody"]["content"]
    }
    assert types and types <= {"application/json", "application/x-www-form-urlencoded"}, types


def test_a_multipart_body_is_a_json_415(client):
    from tests.integrations.test_api_keys import make_key

    boundary = "c637e12e2b1a998d80d1b087531af51c"
    response = client.post(
        "/api/v1/users/",
        data=f'--{boundary}\r\nContent-Disposition: form-data; name="externalId"\r\n\r\nu-1\r\n'
        f"--{boundary}--\r\n".encode(),
        content_type=f"multipart/form-data; boundary={boundary}",
        HTTP_AUTHORIZATION=f"Bearer {make_key('users:write')}",
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
