"""Where a relay is, and what may be handed out: non-public addresses need an explicit allow
with a reason, secrets are long, STUN-only entries and unaudited relays are never assigned, and
every registry change (admin included) records its event."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from relays.models import Relay, RelayEvent, RelayStatus
from relays.selectors import select_relays_for
from relays.services import relay_create, relay_update

pytestmark = [pytest.mark.django_db, pytest.mark.smoke]

SECRET = "a-secret-of-more-than-16"


@pytest.mark.parametrize(
    "url",
    [
        "turn:169.254.169.254:3478?transport=udp",  # cloud metadata (measured: was accepted)
        "turn:localhost:3478?transport=udp",
        "turn:0.0.0.0:3478?transport=udp",
        "turn:[::1]:3478?transport=udp",
        "turn:10.1.2.3:3478?transport=udp",
        "turn:100.64.0.7:3478?transport=udp",  # CGNAT
        "turn:203.0.113.10:3478?transport=udp",  # documentation range
        "turn:no-such-host.invalid:3478?transport=udp",
    ],
)
def test_non_public_relays_need_an_explicit_allow(url):
    with pytest.raises(ValidationError) as err:
        relay_create(name="r", urls=[url], secret=SECRET)
    assert "Not a public address" in str(err.value)
    with pytest.raises(ValidationError) as err:
        relay_create(name="r", urls=[url], secret=SECRET, allow_private=True)
    assert "Say why" in str(err.value)
    assert not Relay.objects.exists()
    relay = relay_create(
        name="r", urls=[url], secret=SECRET, allow_private=True, private_reason="lab rig"
    )
    events = {e.kind: e.detail for e in RelayEvent.objects.filter(relay=relay)}
    assert set(events) == {"created", "allow-private"} and "lab rig" in events["allow-private"]


def test_public_addresses_need_nothing():
    relay = relay_create(name="pub", urls=["turn:8.8.8.8:3478?transport=udp"], secret=SECRET)
    assert not relay.allow_private
    assert [e.kind for e in relay.events.all()] == ["created"]


def test_short_secrets_are_refused():
    with pytest.raises(ValidationError) as err:
        relay_create(name="r", urls=["turn:8.8.8.8:3478"], secret="x" * 15)
    assert "at least 16" in str(err.value)


def test_updates_record_what_changed():
    relay = relay_create(name="pub", urls=["turn:8.8.8.8:3478?transport=udp"], secret=SECRET)
    relay_update(relay=relay, urls=relay.urls, secret=SECRET + "-new", region="eu")
    event = relay.events.get(kind="updated")
    assert event.detail == "secret, region" and SECRET not in event.detail
    with pytest.raises(ValidationError):
        relay_update(relay=relay, urls=["turn:127.0.0.1:3478"], secret=SECRET)


def _healthy(name: str, urls: list[str], **extra) -> Relay:
    return Relay.objects.create(
        name=name,
        urls=urls,
        secret=SECRET,
        status=RelayStatus.UP,
        last_checked_at=timezone.now(),
        **extra,
    )


def test_stun_only_and_unaudited_relays_are_never_handed_out(alice):
    """Measured before: a STUN-only "relay" with a 1-character secret went up, safe, and took a
    relay slot in callers' ICE servers."""
    _healthy("stun-only", ["stun:8.8.8.8:3478"], audited_at=timezone.now(), last_rtt_ms=1)
    _healthy("unaudited", ["turn:8.8.4.4:3478?transport=udp"], last_rtt_ms=2)
    _healthy("good", ["turn:1.1.1.1:3478?transport=udp"], audited_at=timezone.now(), last_rtt_ms=3)
    assert [r.name for r in select_relays_for(user=alice)] == ["good"]


def test_safety_reads_not_audited_until_an_audit_ran(capsys):
    relay = _healthy("r", ["turn:8.8.8.8:3478?transport=udp"], deep_checked_at=timezone.now())
    assert relay.display_safety() == "not audited yet"
    call_command("relays", "list")
    assert "unaudited" in capsys.readouterr().out
    Relay.objects.filter(pk=relay.pk).update(audited_at=timezone.now())
    relay.refresh_from_db()
    assert relay.display_safety() == "safe"


def test_the_cli_takes_allow_private_with_a_reason(tmp_path, capsys):
    secret = tmp_path / "s"
    secret.write_text(SECRET)
    args = ["relays", "add", "lab", "--url", "turn:127.0.0.1:3478", "--secret-file", str(secret)]
    with pytest.raises(CommandError, match="Not a public address"):
        call_command(*args)
    call_command(*args, "--allow-private", "--reason", "the lab's loopback relay")
    relay = Relay.objects.get(name="lab")
    assert relay.allow_private
    assert "the lab's loopback relay" in relay.events.get(kind="allow-private").detail
    secret.write_text("short")
    with pytest.raises(CommandError, match="at least 16"):
        call_command("relays", "rotate", "lab", "--next-secret-file", str(secret))


def test_admin_add_goes_through_the_registry(client, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="x-long-password-1")
    client.force_login(root)
    form = {
        "name": "meta",
        "region": "",
        "urls": '["turn:169.254.169.254:3478?transport=udp"]',
        "realm": "",
        "enabled": "on",
        "secret": SECRET,
    }
    response = client.post("/admin/relays/relay/add/", form)
    assert response.status_code == 200 and "Not a public address" in response.content.decode()
    response = client.post("/admin/relays/relay/add/", {**form, "secret": "short"})
    assert "at least 16" in response.content.decode()
    assert not Relay.objects.exists()
    form.update(allow_private="on", private_reason="a lab relay")
    assert client.post("/admin/relays/relay/add/", form).status_code == 302
    relay = Relay.objects.get(name="meta")
    kinds = {e.kind: e for e in relay.events.all()}
    assert set(kinds) == {"created", "allow-private"}
    assert kinds["created"].actor == root and kinds["allow-private"].actor == root
    html = client.get(f"/admin/relays/relay/{relay.pk}/change/").content.decode()
    assert "not audited yet" in html and SECRET not in html
