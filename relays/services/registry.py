"""The relay registry: register, change, drain, disable, enable and remove relays. Every write
records its event (who did what, when), and the admin's forms go through these too."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from ..addresses import AddressFinding, describe, non_public_addresses
from ..ice_urls import IceUrlError
from ..models import MIN_SECRET_LENGTH, Relay, RelayEvent, RelayEventKind, RelayStatus
from ..snapshot import fleet_changed

logger = logging.getLogger("relays.services")


class Keep:
    """relay_update's `capacity=KEEP`: leave it as it is (None means no limit)."""


KEEP = Keep()


def _check_location(
    *, urls: list[str], allow_private: bool, private_reason: str
) -> list[AddressFinding]:
    """Raise ValidationError when the URLs resolve to non-public addresses (or don't resolve)
    and that was not allowed, with a reason. Returns what was found."""
    try:
        findings = non_public_addresses(urls)
    except IceUrlError as exc:
        raise ValidationError({"urls": [str(exc)]}) from exc
    if findings and not allow_private:
        raise ValidationError(
            {
                "urls": [
                    f"Not a public address: {describe(findings)}. A relay on a private network "
                    "(a test rig, a lab) needs allow_private (--allow-private) and a reason."
                ]
            }
        )
    if findings and not private_reason.strip():
        raise ValidationError(
            {"private_reason": ["Say why this relay may have a non-public address."]}
        )
    return findings


def relay_validate(
    *, urls: list[str], secret: str, allow_private: bool = False, private_reason: str = ""
) -> list[AddressFinding]:
    """The registry's rules, for forms that want the errors before saving: URLs that parse, a
    secret of at least MIN_SECRET_LENGTH characters, and a public address unless allowed.
    Returns the non-public addresses found (allowed ones)."""
    errors: dict[str, list[str]] = {}
    findings: list[AddressFinding] = []
    if len(secret) < MIN_SECRET_LENGTH:
        errors["secret"] = [f"Use a secret of at least {MIN_SECRET_LENGTH} characters."]
    try:
        findings = _check_location(
            urls=urls, allow_private=allow_private, private_reason=private_reason
        )
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return findings


def relay_create(
    *,
    name: str,
    urls: list[str],
    secret: str,
    region: str = "",
    realm: str = "",
    failure_domain: str = "",
    capacity: int | None = None,
    weight: float = 1.0,
    enabled: bool = True,
    unsafe_override: bool = False,
    allow_private: bool = False,
    private_reason: str = "",
    actor=None,
) -> Relay:
    """Register a relay, and record it as an event (with the reason, when its address is not
    public). Raises ValidationError on bad URLs, a short secret, a duplicate name, or a
    non-public address that was not allowed."""
    findings = relay_validate(
        urls=urls, secret=secret, allow_private=allow_private, private_reason=private_reason
    )
    relay = Relay(
        name=name,
        urls=urls,
        secret=secret,
        region=region,
        realm=realm,
        failure_domain=failure_domain,
        capacity=capacity,
        weight=weight,
        enabled=enabled,
        unsafe_override=unsafe_override,
        allow_private=allow_private,
    )
    relay.full_clean()
    with transaction.atomic():
        relay.save()
        relay_event(relay, RelayEventKind.CREATED, actor=actor, detail=" ".join(urls)).save()
        if findings:
            detail = f"{describe(findings)}: {private_reason.strip()}"
            relay_event(relay, RelayEventKind.ALLOW_PRIVATE, actor=actor, detail=detail).save()
    logger.info("relay registered: %s %s", relay.name, relay.urls)
    return relay


def relay_update(
    *,
    relay: Relay,
    urls: list[str],
    secret: str,
    region: str = "",
    realm: str = "",
    name: str | None = None,
    failure_domain: str | None = None,
    capacity: int | None | Keep = KEEP,
    weight: float | None = None,
    allow_private: bool | None = None,
    private_reason: str = "",
    actor=None,
) -> Relay:
    """Change a relay's URLs, secret, region and realm at once (provisioning scripts, admin), and
    its failure domain, capacity and weight when given (None, or KEEP for capacity: as they
    are). A new secret takes effect immediately; to change it without breaking calls, stage a next
    secret. The deep checks (and the safety audit) run again at the next sweep. Every change is
    recorded as an event. Raises ValidationError as relay_create does."""
    allow_private = relay.allow_private if allow_private is None else allow_private
    findings = relay_validate(
        urls=urls,
        secret=secret,
        allow_private=allow_private,
        private_reason=private_reason or ("allowed before" if relay.allow_private else ""),
    )
    changed = relay.urls != urls or relay.secret != secret
    failure_domain = relay.failure_domain if failure_domain is None else failure_domain
    capacity = relay.capacity if isinstance(capacity, Keep) else capacity
    weight = relay.weight if weight is None else weight
    what = [
        label
        for label, before, after in (
            ("name", relay.name, name if name is not None else relay.name),
            ("URLs", relay.urls, urls),
            ("secret", relay.secret, secret),
            ("region", relay.region, region),
            ("realm", relay.realm, realm),
            ("failure domain", relay.failure_domain, failure_domain),
            ("capacity", relay.capacity, capacity),
            ("weight", relay.weight, weight),
            ("allow_private", relay.allow_private, allow_private),
        )
        if before != after
    ]
    newly_private = allow_private and not relay.allow_private
    if name is not None:
        relay.name = name
    relay.urls, relay.secret, relay.region, relay.realm = urls, secret, region, realm
    relay.failure_domain, relay.capacity, relay.weight = failure_domain, capacity, weight
    relay.allow_private = allow_private
    relay.full_clean()
    with transaction.atomic():
        relay.save(
            update_fields=[
                "name",
                "urls",
                "secret",
                "region",
                "realm",
                "failure_domain",
                "capacity",
                "weight",
                "allow_private",
                "updated_at",
            ]
        )
        if what:
            relay_event(relay, RelayEventKind.UPDATED, actor=actor, detail=", ".join(what)).save()
        if newly_private and findings:
            detail = f"{describe(findings)}: {private_reason.strip()}"
            relay_event(relay, RelayEventKind.ALLOW_PRIVATE, actor=actor, detail=detail).save()
        if changed:
            relay_config_changed(relay=relay)
    if what:
        logger.info("relay updated: %s (%s)", relay.name, ", ".join(what))
    return relay


def relay_remove(*, name: str) -> bool:
    """Remove a relay by name. Returns False when there was none."""
    deleted, _ = Relay.objects.filter(name=name).delete()
    if deleted:
        logger.info("relay removed: %s", name)
    return bool(deleted)


def relay_event(
    relay: Relay, kind: RelayEventKind, *, actor=None, detail: str = "", at=None
) -> RelayEvent:
    """An event about `relay` (unsaved: the caller stores it with its change), logged."""
    event = RelayEvent(relay=relay, kind=kind, actor=actor, detail=detail, at=at or timezone.now())
    who = f" by {actor.get_username()}" if actor is not None else ""
    unwell = (RelayEventKind.DOWN, RelayEventKind.DEGRADED, RelayEventKind.UNSAFE)
    log = logger.warning if kind in unwell else logger.info
    log("relay %s: %s%s %s", relay.name, kind, who, detail)
    return event


def _admin_change(relay: Relay, kind: RelayEventKind, actor, detail: str = "", **fields) -> Relay:
    with transaction.atomic():
        for name, value in fields.items():
            setattr(relay, name, value)
        relay.save(update_fields=[*fields, "updated_at"])
        relay_event(relay, kind, actor=actor, detail=detail).save()
    return relay


def relay_drain(*, relay: Relay, actor) -> Relay:
    """No new assignments; the credentials already handed out run out on their own."""
    return _admin_change(relay, RelayEventKind.DRAINED, actor, draining=True)


def relay_disable(*, relay: Relay, actor) -> Relay:
    """No probes and no assignments until re-enabled."""
    return _admin_change(relay, RelayEventKind.DISABLED, actor, enabled=False)


def relay_enable(*, relay: Relay, actor) -> Relay:
    """Back in service: enabled and not draining. Its health is probed again from unknown."""
    return _admin_change(
        relay,
        RelayEventKind.ENABLED,
        actor,
        enabled=True,
        draining=False,
        status=RelayStatus.UNKNOWN,
        worse_streak=0,
        better_streak=0,
        deep_checked_at=None,
    )


def relay_set_unsafe_override(*, relay: Relay, override: bool, actor, reason: str = "") -> Relay:
    """Let an admin assign a relay the audit flags unsafe (test rigs on loopback only)."""
    detail = ("override on" if override else "override off") + (f": {reason}" if reason else "")
    return _admin_change(
        relay, RelayEventKind.OVERRIDE, actor, detail=detail, unsafe_override=override
    )


def relay_stage_next_secret(*, relay: Relay, secret: str, actor=None) -> Relay:
    """Stage the secret to rotate to. Issuing switches once a probe with it succeeds."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValidationError(
            {"next_secret": [f"Use a secret of at least {MIN_SECRET_LENGTH} characters."]}
        )
    return _admin_change(relay, RelayEventKind.SECRET_STAGED, actor, next_secret=secret)


def relay_config_changed(*, relay: Relay) -> None:
    """URLs or secret changed: run the deep checks at the next sweep, not an interval later, and
    audit again before the relay is handed out."""
    Relay.objects.filter(pk=relay.pk).update(deep_checked_at=None, audited_at=None)
    fleet_changed()  # not handed out again before the audit
    relay.deep_checked_at = relay.audited_at = None
