"""Lookups compiled once (config/compiled.py): the session and user reads every signed-in
request makes, with the ORM kept wherever it would prepare a value or convert a column."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from config.compiled import CompiledLookup
from relays.models import Relay
from tests.conftest import up_relay

pytestmark = pytest.mark.django_db

FIELDS = [f.attname for f in User._meta.concrete_fields]


def as_stored(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def test_a_user_read_by_primary_key_is_the_orms_user_in_one_query(alice, bob):
    lookup = CompiledLookup(User, "pk")
    for user in (alice, bob, alice):
        with CaptureQueriesContext(connection) as queries:
            got = lookup.get(user.pk)
        assert len(queries) == 1
        assert type(got) is User and not got._state.adding and got._state.db == "default"
        assert as_stored(got) == as_stored(User._default_manager.db_manager().filter(pk=user.pk)[0])
    # Compiled on PostgreSQL; SQLite's booleans and datetimes come back through converters, so
    # there it is the ORM (as before).
    assert (lookup._plans["default"] is not None) == (connection.vendor == "postgresql")
    assert lookup.get(alice.pk + bob.pk + 1000) is None


def test_the_user_managers_get_by_pk_is_compiled_and_keeps_djangos_contract(alice):
    got = User.objects.get(pk=alice.pk)
    assert got == alice and got.username == "alice" and got.display_name == "Alice"
    assert got.check_password  # a whole user: the session hash check reads its password
    with pytest.raises(User.DoesNotExist):
        User.objects.get(pk=alice.pk + 1000)
    # Other shapes go through the ORM, unchanged.
    assert User.objects.get(pk=str(alice.pk)) == alice
    assert User.objects.get(username="alice") == alice
    with pytest.raises(User.DoesNotExist):
        User.objects.get(pk="999999")


def test_a_value_the_orm_would_prepare_keeps_the_orm(alice):
    """A primary key given as text: the ORM turns it into a number before sending it, so the
    lookup doesn't compile (and is right either way)."""
    lookup = CompiledLookup(User, "pk")
    assert lookup.get(str(alice.pk)) == alice
    assert lookup._plans["default"] is None
    assert lookup.get(alice.pk) == alice  # the ORM, still right


def test_a_column_the_orm_converts_on_the_way_back_keeps_the_orm():
    """Relay.urls is a JSONField: PostgreSQL's JSON comes back through a converter."""
    relay = up_relay("converted", urls=["turn:converted.example:3478?transport=udp"])
    lookup = CompiledLookup(Relay, "pk")
    got = lookup.get(relay.pk)
    assert got.urls == ["turn:converted.example:3478?transport=udp"]
    if connection.vendor == "postgresql" or Relay._meta.get_field("urls").get_db_converters(
        connection
    ):
        assert lookup._plans["default"] is None


def test_two_rows_are_an_error_as_with_the_orm(alice, bob):
    alice.display_name = bob.display_name = "Twin"
    User.objects.bulk_update([alice, bob], ["display_name"])
    lookup = CompiledLookup(User, "display_name")
    with pytest.raises(User.MultipleObjectsReturned):
        lookup.get("Twin")


def test_a_session_is_read_compiled_and_expired_or_removed_ones_sign_nobody_in(alice):
    client = Client()
    client.force_login(alice)
    key = client.cookies["sessionid"].value
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/v1/whoami/").json()["user"]["username"] == "alice"
    reads = [
        q["sql"] for q in queries if "django_session" in q["sql"] or "accounts_user" in q["sql"]
    ]
    assert len(reads) == 2, reads  # the session and the user, one statement each

    Session.objects.filter(session_key=key).update(expire_date=timezone.now() - timedelta(1))
    assert client.get("/api/v1/whoami/").status_code in (401, 403)
    client.force_login(alice)
    Session.objects.filter(session_key=client.cookies["sessionid"].value).delete()
    assert client.get("/api/v1/whoami/").status_code in (401, 403)


def test_a_deactivated_user_or_a_changed_password_ends_the_session(alice):
    client = Client()
    client.force_login(alice)
    assert client.get("/api/v1/whoami/").status_code == 200
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert client.get("/api/v1/whoami/").status_code in (401, 403)

    User.objects.filter(pk=alice.pk).update(is_active=True)
    client.force_login(alice)
    assert client.get("/api/v1/whoami/").status_code == 200
    alice.set_password("a-new-passphrase-9")
    alice.save()
    assert client.get("/api/v1/whoami/").status_code in (401, 403)
