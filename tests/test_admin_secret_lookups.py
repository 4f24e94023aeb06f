"""No admin changelist filters on a secret: every registered admin, every path to a secret.

Measured before the fix: a staff user with only relays.view_relay recovered a 43-character
relay secret with `?secret__regex=^<prefix>` in 1,406 requests."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission

from config.admin_lookups import SECRET_FIELDS

pytestmark = [pytest.mark.django_db, pytest.mark.smoke]


def secret_paths(model, depth: int = 3, prefix: str = "", seen=()) -> list[str]:
    """Every lookup path from this model to a secret field, through relations."""
    paths = []
    for field in model._meta.get_fields():
        name = getattr(field, "name", None)
        if name is None:
            continue
        if name in SECRET_FIELDS and not field.is_relation:
            paths.append(prefix + name)
        elif field.is_relation and field.related_model and depth > 1:
            if field.related_model in seen:
                continue
            # (a reverse relation's name is already its query name)
            paths += secret_paths(
                field.related_model, depth - 1, f"{prefix}{name}__", (*seen, model)
            )
    return paths


def all_cases() -> list[tuple[str, str]]:
    cases = []
    for model in admin.site._registry:
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        for path in secret_paths(model):
            cases.append((url, path))
    return cases


def test_the_walk_finds_the_known_paths():
    cases = set(all_cases())
    assert ("/admin/relays/relay/", "secret") in cases
    assert ("/admin/relays/proberesult/", "relay__next_secret") in cases
    assert ("/admin/calls/call/", "participants__relay__secret") in cases
    assert ("/admin/accounts/user/", "password") in cases


@pytest.mark.parametrize("lookup", ["startswith", "regex", "exact", "gt"])
def test_every_secret_lookup_is_refused_for_superusers(client, django_user_model, lookup):
    root = django_user_model.objects.create_superuser("root", password="x-long-password-1")
    client.force_login(root)
    for url, path in all_cases():
        response = client.get(url, {f"{path}__{lookup}": "a"})
        assert response.status_code == 400, (url, path, response.status_code)


def test_a_viewer_cannot_filter_on_the_relay_secret(client, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_relay"))
    client.force_login(viewer)
    assert client.get("/admin/relays/relay/").status_code == 200
    assert client.get("/admin/relays/relay/", {"secret__regex": "^a"}).status_code == 400
    assert client.get("/admin/relays/relay/", {"name__startswith": "a"}).status_code == 200
