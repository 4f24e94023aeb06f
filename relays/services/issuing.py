"""Issuing: the best relays for a caller, with short-lived TURN REST credentials."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from config.ratelimits import per_user_retry_after

from ..allocations import opaque_id
from ..credentials import turn_rest_pair
from ..models import CredentialGrant, Relay, new_grant_id
from ..selectors import select_relays_for, stun_fallback_urls
from ..snapshot import drop_snapshot

logger = logging.getLogger("relays.services")


NO_RELAY_REASON = (
    "No relay can be handed out right now (none is healthy, safe and under capacity). Calls "
    "still connect directly where both networks allow it, but may fail behind strict NATs or "
    "firewalls."
)


class IceLimited(Exception):
    """This user asked for credentials more often than ICE_ISSUE_RATE allows."""

    code = "ice_limited"

    def __init__(self, retry_after: int):
        self.retry_after = max(1, int(retry_after))
        super().__init__(
            f"Too many requests for relay credentials; try again in {self.retry_after} s."
        )


def ice_issue_check(*, user) -> None:
    """Count one issue for `user`; IceLimited when over ICE_ISSUE_RATE (django-ratelimit's fixed
    windows, in the Redis cache)."""
    wait = per_user_retry_after(user=user, group="relays.issue", rate=settings.ICE_ISSUE_RATE)
    if wait is not None:
        raise IceLimited(wait)


_ADD_GRANT_SQL = """
WITH live AS (
    SELECT 1 FROM {grants} WHERE {user} = %(user)s AND expires_at > %(now)s LIMIT %(cap)s
), added AS (
    INSERT INTO {grants} (id, {user}, created_at, expires_at)
    SELECT %(id)s, %(user)s, %(now)s, %(expires_at)s WHERE (SELECT count(*) FROM live) < %(cap)s
    RETURNING id
)
INSERT INTO {links} ({link_grant}, {link_relay})
SELECT added.id, relay FROM added, unnest(%(relays)s::uuid[]) AS relay
RETURNING {link_grant}
"""


@functools.cache
def _grant_sql(template: str) -> str:
    through = CredentialGrant.relays.through
    return template.format(
        grants=CredentialGrant._meta.db_table,
        user=CredentialGrant._meta.get_field("user").column,
        links=through._meta.db_table,
        link_grant=through._meta.get_field("credentialgrant").column,
        link_relay=through._meta.get_field("relay").column,
    )


def _add_grant(*, user, relays: Sequence, now, expires_at) -> str | None:
    """The id of a new grant for `user` naming `relays`, unless the user already holds
    ICE_GRANTS_PER_USER unexpired grants (None: the caller then extends one of them). The count
    is read without a lock: two pages at once may both pass it, by one grant."""
    add = _add_grant_in_one_statement if connection.vendor == "postgresql" else _add_grant_orm
    return add(user=user, relays=relays, now=now, expires_at=expires_at)


def _add_grant_orm(*, user, relays: Sequence, now, expires_at) -> str | None:
    cap = settings.ICE_GRANTS_PER_USER
    through = CredentialGrant.relays.through
    with transaction.atomic():
        if CredentialGrant.objects.filter(user=user, expires_at__gt=now)[:cap].count() >= cap:
            return None
        grant = CredentialGrant.objects.create(user=user, expires_at=expires_at)
        through.objects.bulk_create([through(credentialgrant=grant, relay=r) for r in relays])
    return grant.id


def _add_grant_in_one_statement(*, user, relays: Sequence, now, expires_at) -> str | None:
    """PostgreSQL: a new page's grant is the hot path, so the count, the grant and its links
    are one statement (atomic as any statement is: never a grant without its relays)."""
    grant_id = new_grant_id()
    params = {
        "id": grant_id,
        "user": user.pk,
        "now": now,
        "expires_at": expires_at,
        "cap": settings.ICE_GRANTS_PER_USER,
        "relays": [relay.pk for relay in relays],
    }
    # Inside a caller's transaction, a savepoint: a link to a relay deleted meanwhile then fails
    # this statement alone, and ice_servers_issue tries again.
    nested = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    with nested, connection.cursor() as cursor:
        cursor.execute(_grant_sql(_ADD_GRANT_SQL), params)
        return grant_id if cursor.fetchall() else None


def _no_relay(*, user, payload: dict) -> None:
    """No relay to hand out: the payload says so, and carries STUN where there is any."""
    stun = stun_fallback_urls()
    payload.update(status="no-healthy-relay", reason=NO_RELAY_REASON)
    if stun:
        payload["iceServers"].append({"urls": stun})
    logger.warning(
        "no relay to assign to user %s; STUN only: %s", user.pk, ", ".join(stun) or "none"
    )


_GRANT_RELAYS_SQL = """
SELECT link.{link_relay} FROM {links} link JOIN {grants} grant_ ON grant_.id = link.{link_grant}
WHERE grant_.id = %s AND grant_.{user} = %s AND grant_.expires_at > %s
"""
_GRANT_EXTEND_SQL = """
UPDATE {grants} SET expires_at = %s WHERE id = %s AND {user} = %s AND expires_at > %s
"""


def _refresh_grant(*, user, region, ip, keep, peers, now) -> list | None:
    """The common refresh (a page's credentials before `refreshAt`, a reconnect, a resume): the
    device's grant is the user's and unexpired, and its relays are still the ones to hand out,
    so only its expiry moves. Two statements, compiled once, and no transaction: the grant's
    relays, then the expiry (through the ORM they cost a refresh a third of its CPU in
    compiling, issue 9). The relays; None where that doesn't hold (the relays change, or the
    grant is gone): the caller then does it all under the grant's lock."""
    ttl = settings.TURN_CREDENTIAL_TTL
    since = now - timedelta(seconds=ttl)
    # Bound as the fields prepare them (a datetime, a UUID: each backend stores its own way).
    prep_time = CredentialGrant._meta.get_field("expires_at").get_db_prep_value
    relay_pk = Relay._meta.get_field("id")
    grant = [keep, user.pk, prep_time(since, connection)]
    with connection.cursor() as cursor:
        cursor.execute(_grant_sql(_GRANT_RELAYS_SQL), grant)
        kept = [str(relay_pk.to_python(value)) for (value,) in cursor.fetchall()]
    if not kept:
        return None
    relays = select_relays_for(user=user, region=region, ip=ip, keep=kept, peers=peers)
    if not relays or {str(r.pk) for r in relays} != set(kept):
        return None
    expires_at = prep_time(now + timedelta(seconds=ttl), connection)
    with connection.cursor() as cursor:
        cursor.execute(_grant_sql(_GRANT_EXTEND_SQL), [expires_at, *grant])
        extended = cursor.rowcount
    return relays if extended else None


def _choose_and_grant(*, user, region, ip, keep, peers, now, payload) -> tuple[list, str | None]:
    """The relays for this caller and the id of the grant that names them: the relays as chosen
    (and their secrets as read) are the ones the grant names, and a grant is never stored
    without its relays. (relays, None) when none could be chosen (payload says so).

    A new page (no `keep`) under the cap adds a grant (_add_grant); a refresh whose relays stay
    moves its grant's expiry (_refresh_grant). Otherwise (a refresh that changes relays, a user
    at the cap) a grant is extended in one transaction, under its lock, keeping its relays while
    they are eligible."""
    ttl = settings.TURN_CREDENTIAL_TTL
    expires_at = now + timedelta(seconds=ttl)
    if not keep:
        relays = select_relays_for(user=user, region=region, ip=ip, peers=peers)
        if not relays:
            _no_relay(user=user, payload=payload)
            return relays, None
        grant_id = _add_grant(user=user, relays=relays, now=now, expires_at=expires_at)
        if grant_id is not None:
            return relays, grant_id
        # At the cap (rare: many pages, or many reloads): chosen again below, with the grant
        # that will serve this page too (this process's load count takes both choices).
    else:
        refreshed = _refresh_grant(user=user, region=region, ip=ip, keep=keep, peers=peers, now=now)
        if refreshed is not None:
            return refreshed, keep
    with transaction.atomic():
        held = (
            CredentialGrant.objects.select_for_update()
            .filter(pk=keep, user=user, expires_at__gt=now - timedelta(seconds=ttl))
            .first()
            if keep
            else None
        )
        if held is None:
            cap = settings.ICE_GRANTS_PER_USER
            # Up to `cap` of the user's live grants, newest first: their number and the newest
            # in one read.
            newest = list(
                CredentialGrant.objects.filter(user=user, expires_at__gt=now)
                .order_by("-created_at")
                .values_list("pk", flat=True)[:cap]
            )
            if len(newest) >= cap:
                # At the cap (many pages, or many reloads): the newest grant serves this one too.
                held = CredentialGrant.objects.select_for_update().filter(pk=newest[0]).first()
        kept = list(held.relays.values_list("pk", flat=True)) if held is not None else []
        relays = select_relays_for(
            user=user, region=region, ip=ip, keep=[str(k) for k in kept], peers=peers
        )
        if not relays:
            _no_relay(user=user, payload=payload)
            return relays, None
        links = CredentialGrant.relays.through.objects
        if held is not None:
            grant = held
            CredentialGrant.objects.filter(pk=grant.pk).update(expires_at=expires_at)
            if {r.pk for r in relays} == set(kept):
                relays_changed = False  # a refresh that keeps its relays: only the expiry moves
            else:
                links.filter(credentialgrant=grant).delete()
                relays_changed = True
        else:
            grant = CredentialGrant.objects.create(user=user, expires_at=expires_at)
            relays_changed = True
        if relays_changed:
            links.bulk_create(
                [CredentialGrant.relays.through(credentialgrant=grant, relay=r) for r in relays]
            )
    return relays, grant.id


def ice_servers_issue(
    *,
    user,
    region: str = "",
    ip: str | None = None,
    keep: str = "",
    peers: Sequence[str] = (),
) -> dict:
    """Choose the best relays for this caller (relays.scoring: `region` as the client declared
    it, `ip` for the admin's region table) and issue TURN REST credentials for them.

    Returns the shape that `new RTCPeerConnection({iceServers})` takes, plus ttl, expiry, refresh
    time and the relays chosen. With no relay to hand out, `status` is "no-healthy-relay" with a
    `reason`, and iceServers still carries STUN (relays.selectors.stun_fallback_urls), so the
    browser gathers server-reflexive candidates and two callers behind NATs can still connect
    directly where their NATs allow it.

    `keep` is the grant the device holds (its `grant`, from an earlier answer): a refresh, a
    reconnect or a resume extends that grant instead of adding one, and keeps its relays while
    they are eligible (a call doesn't move relay under way); others replace those that aren't.

    `peers`: the relays the call's other side holds (calls.services.call_ice_issue), so both
    sides meet on one relay, or on a near pair.
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
    # A relay deleted in another process can still be in this process's fleet snapshot for a
    # moment: its grant link then fails (at commit). Once more, with the fleet read afresh.
    for attempt in (1, 2):
        try:
            relays, grant_id = _choose_and_grant(
                user=user, region=region, ip=ip, keep=keep, peers=peers, now=now, payload=payload
            )
            break
        except IntegrityError:
            if attempt == 2:
                raise
            drop_snapshot()
    if grant_id is None:
        return payload
    payload["grant"] = grant_id
    expiry = int(expires_at.timestamp())
    for relay in relays:
        username, credential = turn_rest_pair(
            # The relay's key in the username tells its published allocations apart
            # (relays.allocations): grant g_x on relay r is "<expiry>:g_x.<r in hex>".
            secret=relay.secret,
            expires_at=expiry,
            opaque_id=opaque_id(grant=grant_id, relay_key=relay.pk.hex),
        )
        payload["iceServers"].append(
            {"urls": list(relay.urls), "username": username, "credential": credential}
        )
        payload["relays"].append({"id": str(relay.id), "name": relay.name, "region": relay.region})
    return payload
