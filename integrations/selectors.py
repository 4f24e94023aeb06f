"""Reads of integrators' things."""

from __future__ import annotations

from django.contrib.auth import get_user_model


def end_user(*, integrator, external_id: str, active_only: bool = True):
    """The integrator's user with this externalId; None when it has none (or, with
    `active_only`, when that account is closed). Another integrator's users are never found."""
    if not external_id:
        return None
    users = get_user_model().objects.filter(integrator=integrator, external_id=external_id)
    if active_only:
        users = users.filter(is_active=True)
    return users.first()
