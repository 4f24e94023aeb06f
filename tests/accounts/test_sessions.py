"""Sessions: expired ones are deleted hourly (Django leaves that to the project)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from accounts.tasks import clear_expired_sessions

pytestmark = pytest.mark.django_db


def signed_in(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_expired_sessions_are_deleted_and_live_ones_stay(alice, bob):
    live, expired = signed_in(alice), signed_in(bob)
    Session.objects.filter(session_key=expired).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    assert clear_expired_sessions.apply().get() == 1
    assert set(Session.objects.values_list("session_key", flat=True)) == {live}
    client = Client()
    client.cookies["sessionid"] = live
    assert client.get("/api/v1/whoami/").json()["user"]["username"] == "alice"
    assert clear_expired_sessions.apply().get() == 0
