"""Issuing: the best relays for a caller, with short-lived TURN REST credentials."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ..credentials import turn_rest_pair
from ..models import CredentialGrant
from ..selectors import select_relays_for

logger = logging.getLogger("relays.services")


def ice_servers_issue(*, user) -> dict:
    """Choose the best relays for this user and issue TURN REST credentials for them.

    Returns the shape that `new RTCPeerConnection({iceServers})` takes, plus ttl, expiry, refresh
    time and the relays chosen. With no healthy relay, iceServers is empty and `status` says so:
    the caller can still connect directly where the network allows it.
    """
    ttl = settings.TURN_CREDENTIAL_TTL
    now = timezone.now()
    expires_at = now + timedelta(seconds=ttl)
    payload: dict = {
        "iceServers": [],
        "ttl": ttl,
        "expiresAt": expires_at.isoformat(),
        "refreshAt": (now + timedelta(seconds=int(ttl * 0.8))).isoformat(),
        "relays": [],
        "status": "ok",
    }
    # One transaction: the relays as chosen (and their secrets as read) are the ones the grant
    # names, and a grant is never stored without its relays.
    with transaction.atomic():
        relays = select_relays_for(user=user)
        if not relays:
            payload["status"] = "no-healthy-relay"
            logger.warning("no healthy relay to assign to user %s", user.pk)
            return payload
        grant = CredentialGrant.objects.create(user=user, expires_at=expires_at)
        grant.relays.set(relays)
    expiry = int(expires_at.timestamp())
    for relay in relays:
        username, credential = turn_rest_pair(
            secret=relay.secret, expires_at=expiry, opaque_id=grant.id
        )
        payload["iceServers"].append(
            {"urls": list(relay.urls), "username": username, "credential": credential}
        )
        payload["relays"].append({"id": str(relay.id), "name": relay.name, "region": relay.region})
    return payload
