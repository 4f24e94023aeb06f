"""Webhooks against a real HTTP receiver on loopback: signed by the Standard Webhooks spec
(verified here with the standardwebhooks library), retried with back-off after a 500, given up
after WEBHOOK_MAX_ATTEMPTS, never POSTed to private addresses unless allowed, recorded in the
same transaction as the call or relay change they report."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from integrations.models import DeliveryState, WebhookDelivery, WebhookEndpoint, WebhookMessage
from integrations.webhooks import webhook_deliver, webhooks_deliver_due
from tests.integrations.test_api_keys import bearer, make_key

pytestmark = pytest.mark.django_db


class Receiver:
    def __init__(self):
        self.got: list[tuple[dict, bytes]] = []
        self.statuses: list[int] = []  # answered in order; then 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's spelling
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, secret: str) -> list[dict]:
        """Every body, verified against its signature (raises when one doesn't verify)."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.got]


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def acme(client):
    key = make_key("users:write", "calls:write", "calls:read", "webhooks")
    for ext in ("u-1", "u-2"):
        client.post(
            "/api/v1/users/",
            {"externalId": ext, "displayName": ext},
            content_type="application/json",
            **bearer(key),
        )
    return key


def subscribe(client, key, url, events=()):
    response = client.post(
        "/api/v1/webhooks/",
        {"url": url, "events": list(events)},
        content_type="application/json",
        **bearer(key),
    )
    assert response.status_code == 201, response.content
    return response.json()


def deliver_all():
    pending = WebhookDelivery.objects.filter(state="pending").order_by("next_attempt_at", "pk")
    for delivery_id in pending.values_list("pk", flat=True):
        webhook_deliver(delivery_id)


def test_call_events_are_signed_and_delivered(client, acme, receiver):
    hook = subscribe(client, acme, receiver.url)
    assert hook["secret"].startswith("whsec_")
    call = client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(acme),
    ).json()
    client.post(f"/api/v1/calls/{call['id']}/end/", **bearer(acme))
    deliver_all()
    events = receiver.events(hook["secret"])
    assert [e["type"] for e in events] == ["call.started", "call.ended"]
    assert events[0]["data"]["call"]["id"] == call["id"]
    assert events[1]["data"]["reason"] == "cancelled"
    headers = receiver.got[0][0]
    assert headers["webhook-id"].startswith("msg_") and headers["webhook-timestamp"].isdigit()
    # A forged body doesn't verify.
    forged_headers, body = receiver.got[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(hook["secret"]).verify(body.replace(b"call.started", b"call.ended"), forged_headers)
    assert all(d.state == "delivered" for d in WebhookDelivery.objects.all())


def test_a_500_is_retried_with_back_off_and_the_same_id(client, acme, receiver, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.2
    hook = subscribe(client, acme, receiver.url, events=["call.started"])
    receiver.statuses = [500, 503]
    client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(acme),
    )
    (delivery,) = WebhookDelivery.objects.all()
    assert webhook_deliver(delivery.pk) == "pending"
    assert webhook_deliver(delivery.pk) is None  # not due yet: nothing is sent
    time.sleep(0.25)
    assert webhook_deliver(delivery.pk) == "pending"  # the 503
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.last_status == 503
    assert delivery.next_attempt_at - timezone.now() > timezone.timedelta(seconds=0.2)  # doubled
    time.sleep(0.45)
    assert webhooks_deliver_due() == 1  # the sweep finds it (its task may be lost)
    assert webhook_deliver(delivery.pk) == "delivered"
    ids = {h["webhook-id"] for h, _ in receiver.got}
    assert len(receiver.got) == 3 and len(ids) == 1  # one message, three tries
    assert len(receiver.events(hook["secret"])) == 3


def test_gives_up_after_the_last_attempt(client, acme, receiver, settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.01
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    subscribe(client, acme, receiver.url)
    receiver.statuses = [500] * 10
    client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(acme),
    )
    (delivery,) = WebhookDelivery.objects.all()
    for _ in range(3):
        time.sleep(0.05)
        webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("failed", 3)
    time.sleep(0.05)
    assert webhook_deliver(delivery.pk) is None and len(receiver.got) == 3


def test_private_addresses_are_refused_unless_allowed(client, acme, receiver, settings):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    subscribe(client, acme, receiver.url)
    client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(acme),
    )
    (delivery,) = WebhookDelivery.objects.all()
    webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    assert "not a public address" in delivery.last_error and receiver.got == []


def test_only_wanted_events_and_only_the_integrators_calls(client, acme, receiver, alice, bob):
    from calls.services import call_start

    subscribe(client, acme, receiver.url, events=["call.ended"])
    other = make_key("users:write", "calls:write", "webhooks", integrator="globex", name="g")
    subscribe(client, other, receiver.url + "/globex")
    call_start(caller=alice, callee=bob)  # the site's own people: nobody is told
    client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(acme),
    )
    assert not WebhookMessage.objects.exists()  # acme wants only call.ended; globex isn't in it


def test_a_relay_going_down_is_delivered_and_marks_its_event(client, acme, receiver, coturn):
    from relays.models import Relay, RelayEvent
    from relays.services import relay_sweep
    from tests.conftest import loopback_relay

    hook = subscribe(client, acme, receiver.url, events=["relay.down", "relay.up"])
    relay, server = loopback_relay(coturn, "hooked")
    relay_sweep(relay_ids=[relay.pk], force=True)
    relay_sweep(relay_ids=[relay.pk], force=True)
    server.stop()
    for _ in range(3):
        relay_sweep(relay_ids=[relay.pk], force=True)
    assert Relay.objects.get(pk=relay.pk).status == "down"
    deliver_all()
    types = [e["type"] for e in receiver.events(hook["secret"])]
    assert types == ["relay.up", "relay.down"]
    down = RelayEvent.objects.get(relay=relay, kind="down")
    assert down.delivered_at is not None


def test_webhook_api_crud_and_the_secret_shown_once(client, acme, caplog):
    made = subscribe(client, acme, "https://hooks.example.com/traverse", events=["call.ended"])
    listed = client.get("/api/v1/webhooks/", **bearer(acme)).json()
    assert [w["id"] for w in listed] == [made["id"]] and "secret" not in listed[0]
    one = f"/api/v1/webhooks/{made['id']}/"
    changed = client.patch(one, {"enabled": False}, content_type="application/json", **bearer(acme))
    assert changed.json()["enabled"] is False and "secret" not in changed.json()
    other = make_key("webhooks", integrator="globex", name="g")
    assert client.get(one, **bearer(other)).status_code == 404
    assert client.delete(one, **bearer(other)).status_code == 404
    for bad in ({"url": "not a url"}, {"url": "https://x.example", "events": ["call.exploded"]}):
        refused = client.post(
            "/api/v1/webhooks/", bad, content_type="application/json", **bearer(acme)
        )
        assert refused.status_code == 400
    assert client.delete(one, **bearer(acme)).status_code == 204
    assert not WebhookEndpoint.objects.exists()
    assert made["secret"] not in caplog.text
    no_scope = make_key("calls:read", name="reader")
    assert client.get("/api/v1/webhooks/", **bearer(no_scope)).status_code == 403


def test_admin_shows_the_log_and_delivers_again(
    client, acme, receiver, django_user_model, password
):
    subscribe(client, acme, receiver.url)
    receiver.statuses = [500]
    client.post(
        "/api/v1/calls/",
        {"participants": ["u-1", "u-2"]},
        content_type="application/json",
        **bearer(acme),
    )
    deliver_all()
    django_user_model.objects.create_superuser("root", password=password)
    client.login(username="root", password=password)
    page = client.get("/admin/integrations/webhookdelivery/").content.decode()
    assert "call.started" in page and "HTTP 500" in page
    (delivery,) = WebhookDelivery.objects.all()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state=DeliveryState.FAILED)
    client.post(
        "/admin/integrations/webhookdelivery/",
        {"action": "redeliver", "_selected_action": [delivery.pk]},
    )
    delivery.refresh_from_db()
    assert delivery.state == "pending"
    assert webhook_deliver(delivery.pk) == "delivered"
    assert json.loads(receiver.got[-1][1])["type"] == "call.started"
