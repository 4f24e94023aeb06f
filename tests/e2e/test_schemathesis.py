"""schemathesis over the OpenAPI schema, against the real server (Daphne, the test database),
with an integrator's key that has every scope: no server errors, and every response matches
the schema (status code, content type, body). Hypothesis makes the requests: wrong types,
missing fields, odd strings, huge numbers, NUL bytes."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integrations.test_api_keys import make_key

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ALL = ("users:write", "calls:read", "calls:write", "ice:issue", "webhooks")
EXAMPLES = 30


def test_the_api_does_what_its_schema_says(services, client):
    key = make_key(*ALL)
    headers = {"Authorization": f"Bearer {key}"}
    for ext in ("u-1", "u-2"):
        client.post(
            "/api/v1/users/",
            {"externalId": ext, "displayName": ext},
            content_type="application/json",
            HTTP_AUTHORIZATION=headers["Authorization"],
        )
    schema = schemathesis.openapi.from_url(services["base"] + "/api/v1/schema/")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(
                base_url=services["base"],
                headers=headers,
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                ],
            )

        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - every operation is tried, all reported
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:1500])
    assert operations >= 19
    assert not failures, "\n\n".join(failures)
