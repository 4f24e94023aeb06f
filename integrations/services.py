"""An integrator's end users: made, renamed and deleted over the API (integrations.api)."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from .models import Integrator

EXTERNAL_ID = re.compile(r"[A-Za-z0-9._@:+-]{1,80}")


def end_user_username(integrator: Integrator, external_id: str) -> str:
    """A username no one can sign up with ("~" is not allowed there), unique per integrator."""
    return f"{integrator.slug}~{external_id}"


def end_user_upsert(*, integrator: Integrator, external_id: str, display_name: str):
    """The integrator's user `external_id`, made or renamed. Returns (user, created)."""
    User = get_user_model()
    for _ in range(2):  # two first requests at once: one makes it, the other renames it
        user = User.objects.filter(integrator=integrator, external_id=external_id).first()
        if user is not None:
            if user.display_name != display_name:
                user.display_name = display_name
                user.save(update_fields=["display_name"])
            return user, False
        try:
            with transaction.atomic():
                user = User(
                    username=end_user_username(integrator, external_id),
                    display_name=display_name,
                    integrator=integrator,
                    external_id=external_id,
                )
                user.set_unusable_password()  # they never sign in here: tickets bring them in
                user.save()
            return user, True
        except IntegrityError:
            continue
    raise RuntimeError("end user neither found nor made")  # pragma: no cover


def end_user_delete(*, integrator: Integrator, external_id: str) -> bool:
    """Delete the integrator's user `external_id` with their personal data: their name and id
    go, their credential grants, chat messages and relay measurements are deleted, and the
    account is closed. The calls they were in stay in the other participants' history, under
    "Deleted user". False when there is no such user."""
    from calls.models import ChatMessage
    from relays.models import CredentialGrant

    User = get_user_model()
    with transaction.atomic():
        user = (
            User.objects.select_for_update()
            .filter(integrator=integrator, external_id=external_id)
            .first()
        )
        if user is None:
            return False
        CredentialGrant.objects.filter(user=user).delete()
        ChatMessage.objects.filter(user=user).delete()
        user.username = f"deleted~{user.pk}"
        user.display_name = "Deleted user"
        user.external_id = None
        user.email = ""
        user.first_name = user.last_name = ""
        user.is_active = False
        user.set_unusable_password()
        user.save()
    return True
