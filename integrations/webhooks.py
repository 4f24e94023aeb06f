"""Webhooks: events recorded with the change they report (an outbox), signed by the Standard
Webhooks spec (the `standardwebhooks` library: webhook-id, webhook-timestamp,
webhook-signature), delivered by Celery with retries and exponential back-off.

- `webhook_emit` runs inside the change's transaction: the message and one delivery per
  subscribed endpoint commit with the change, or not at all. After commit a task is queued; if
  the queue is down, `webhooks_deliver_due` (Celery beat, every WEBHOOK_SWEEP_SECONDS) finds
  the pending deliveries later, so no event is lost when the worker or Redis is.
- A delivery is tried at most WEBHOOK_MAX_ATTEMPTS times: after a failure (no 2xx within
  WEBHOOK_TIMEOUT_SECONDS, or a refused address) the next try waits WEBHOOK_RETRY_BASE_SECONDS
  × 2^(attempts-1), up to six hours. Then it is `failed`; admin can deliver it again.
- Receivers get at-least-once delivery: the webhook-id is the message id, the same on every
  try, for them to drop duplicates.
- Only public addresses are POSTed to (the host is resolved first), unless
  WEBHOOK_ALLOW_PRIVATE (tests, a lab): a webhook URL must not turn the server into a way into
  its own network (SSRF). Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from relays.addresses import resolve

from .models import DeliveryState, WebhookDelivery, WebhookEndpoint, WebhookMessage

logger = logging.getLogger("integrations.webhooks")
MAX_BACKOFF = timedelta(hours=6)


def webhook_emit(
    event_type: str, data: dict, *, integrator_id=None, relay_event=None
) -> str | None:
    """Record an event for the endpoints that want it: an integrator's (call events), or every
    integrator's (relay events: `integrator_id` None). Call inside the change's transaction.
    Returns the message id, or None when no endpoint wants it."""
    endpoints = WebhookEndpoint.objects.filter(enabled=True)
    if integrator_id is not None:
        endpoints = endpoints.filter(integrator_id=integrator_id)
    wanted = [e for e in endpoints if e.wants(event_type)]
    if not wanted:
        return None
    now = timezone.now()
    message = WebhookMessage.objects.create(
        type=event_type,
        payload={"type": event_type, "timestamp": now.isoformat(), "data": data},
        relay_event=relay_event,
    )
    deliveries = WebhookDelivery.objects.bulk_create(
        [WebhookDelivery(message=message, endpoint=e, next_attempt_at=now) for e in wanted]
    )
    ids = [d.pk for d in deliveries]
    transaction.on_commit(lambda: _queue(ids))
    return message.id


def _queue(delivery_ids: list[int], countdown: float = 0) -> None:
    from .tasks import deliver_webhook

    for delivery_id in delivery_ids:
        try:
            deliver_webhook.apply_async((delivery_id,), countdown=countdown)
        except Exception as exc:  # the broker is down: the due sweep delivers it later
            logger.warning("webhook delivery %s not queued (%s); the sweep will", delivery_id, exc)


class Refused(Exception):
    pass


def _check_destination(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise Refused("not an http(s) URL")
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return
    addresses = resolve(parts.hostname)
    if not addresses:
        raise Refused(f"{parts.hostname} does not resolve")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if not ip.is_global or ip.is_multicast:
            raise Refused(f"{parts.hostname} is {address}, not a public address")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def signed_request(endpoint: WebhookEndpoint, message: WebhookMessage, *, now: datetime):
    body = json.dumps(message.payload, separators=(",", ":"))
    signature = Webhook(endpoint.secret).sign(msg_id=message.id, timestamp=now, data=body)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Traverse-Webhooks/1",
        "webhook-id": message.id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    return urllib.request.Request(endpoint.url, data=body.encode(), headers=headers, method="POST")


def backoff(attempts: int) -> timedelta:
    delay = timedelta(seconds=settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1))
    return min(delay, MAX_BACKOFF)


def webhook_deliver(delivery_id: int) -> str | None:
    """Try one delivery now, if it is pending and due (a task and the sweep may both ask: the
    claim makes it once). Returns its state afterwards, None when it wasn't tried.

    The claim is a short transaction that counts the attempt and leases the delivery until the
    POST can have timed out; the POST runs with no transaction or row lock held, and its outcome
    is written in a second one. A worker that dies mid-POST leaves the lease to run out, and the
    sweep tries again."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .select_related("message", "endpoint")
            .filter(pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now)
            .first()
        )
        if delivery is None:
            return None
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 30)
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    status, error = None, ""
    try:
        _check_destination(delivery.endpoint.url)
        request = signed_request(delivery.endpoint, delivery.message, now=now)
        with _opener.open(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            status = response.status
    except Refused as exc:
        error = f"refused: {exc}"
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    delivery.last_status = status
    if status is not None and 200 <= status < 300:
        delivery.state = DeliveryState.DELIVERED
        delivery.delivered_at = timezone.now()
        delivery.last_error = ""
    else:
        delivery.last_error = error[:300] or f"HTTP {status}"
        if delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
            delivery.state = DeliveryState.FAILED
        else:
            delivery.next_attempt_at = timezone.now() + backoff(delivery.attempts)
    with transaction.atomic():
        delivery.save(
            update_fields=["state", "last_status", "last_error", "delivered_at", "next_attempt_at"]
        )
        if delivery.state == DeliveryState.DELIVERED:
            _relay_event_delivered(delivery.message)
    if delivery.state == DeliveryState.PENDING:
        logger.info(
            "webhook %s to %s failed (%s); try %d again in %.0f s",
            delivery.message_id,
            delivery.endpoint_id,
            delivery.last_error,
            delivery.attempts + 1,
            (delivery.next_attempt_at - timezone.now()).total_seconds(),
        )
        _queue(
            [delivery.pk],
            countdown=max(0.0, (delivery.next_attempt_at - timezone.now()).total_seconds()),
        )
    return delivery.state


def _relay_event_delivered(message: WebhookMessage) -> None:
    """A relay event is delivered once every endpoint that wanted it has it."""
    if message.relay_event_id is None:
        return
    if not message.deliveries.exclude(state=DeliveryState.DELIVERED).exists():
        from relays.models import RelayEvent

        RelayEvent.objects.filter(pk=message.relay_event_id, delivered_at=None).update(
            delivered_at=timezone.now()
        )


def webhooks_deliver_due(*, limit: int = 500) -> int:
    """The outbox sweep: queue every pending delivery that is due (a task lost with the broker,
    a retry whose task never ran). Returns how many were queued."""
    ids = list(
        WebhookDelivery.objects.filter(
            state=DeliveryState.PENDING, next_attempt_at__lte=timezone.now()
        )
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:limit]
    )
    _queue(ids)
    return len(ids)


def webhook_redeliver(delivery: WebhookDelivery) -> None:
    """Admin's "deliver again": pending and due now, whatever happened before."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state=DeliveryState.PENDING, next_attempt_at=timezone.now(), delivered_at=None
    )
    transaction.on_commit(lambda: _queue([delivery.pk]))
