"""Whatever an integrator posts, the API answers with a status and a JSON body, never a 500,
and stored data stays whole."""

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from calls.models import Call

pytestmark = pytest.mark.django_db

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
bodies = (
    st.dictionaries(
        st.sampled_from(["callee", "Callee", "id", "state"]), json_values, max_size=3
    ).map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=60)
    | st.binary(max_size=60).map(lambda b: b.decode("latin-1"))
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_posting_anything_to_calls_is_answered_cleanly(client, alice, bob, body):
    client.force_login(alice)  # no password hashing per example
    before = Call.objects.count()
    response = client.post("/api/v1/calls/", body, content_type="application/json")
    assert response.status_code in (201, 400), (response.status_code, body)
    assert isinstance(response.json(), dict)
    created = Call.objects.count() - before
    assert created == (1 if response.status_code == 201 else 0)
    if created:
        assert json.loads(body)["callee"].strip().lower() == "bob"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call_id=st.text(max_size=40))
@example(call_id="#\x00")
@example(call_id="a\nb")
@example(call_id="?x=1")
def test_any_call_id_is_a_404_or_a_call_of_yours(client, alice, call_id):
    client.force_login(alice)  # no password hashing per example
    # Quoted as a client would: a raw "#" or "?" would end the path (Hypothesis found "#\x00").
    response = client.get(f"/api/v1/calls/{quote(call_id, safe='')}/")
    if "\x00" in call_id:  # refused before any view (config.middleware.NulCharacterMiddleware)
        assert response.status_code == 400
    else:  # none of these is a call: a JSON 404, whatever the characters
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
