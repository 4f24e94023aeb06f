"""Celery tasks for relays: thin wrappers that take ids and call services."""

import time

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from .services import relay_prune_history, relay_sweep


@shared_task(name="relays.tasks.sweep_relays", ignore_result=False)
def sweep_relays(relay_ids: list[str] | None = None) -> dict:
    """Probe the relays this worker claims for the interval; returns {name: status}."""
    outcomes = relay_sweep(relay_ids=relay_ids)
    return {o.relay.name: o.relay.status for o in outcomes}


@shared_task(name="relays.tasks.reprobe_relay")
def reprobe_relay(relay_id: str) -> str | None:
    """A client reported this relay failing: probe it now, and again a second later while it
    fails, up to RELAY_DOWN_AFTER times, so a broken relay is withdrawn within seconds (the
    hysteresis still decides: a relay the probes find working stays). Returns its status."""
    status = None
    for attempt in range(max(1, settings.RELAY_DOWN_AFTER)):
        if attempt:
            time.sleep(1.0)
        outcomes = relay_sweep(relay_ids=[relay_id], force=True)
        if not outcomes:
            return None  # removed or disabled meanwhile
        status = outcomes[0].relay.status
        if outcomes[0].observation == "ok":
            break
    return status


@shared_task(name="relays.tasks.prune_relay_history")
def prune_relay_history() -> dict:
    return relay_prune_history()


@worker_ready.connect
def sweep_when_a_worker_starts(sender, **kwargs) -> None:
    # A fresh worker learns the fleet's health at once instead of one interval later.
    if settings.RELAY_SWEEP_ON_WORKER_START:
        sweep_relays.delay()
