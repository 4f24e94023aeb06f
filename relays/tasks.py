"""Celery tasks for relays: thin wrappers that call services."""

from celery import shared_task
from celery.signals import worker_ready

from .services import relay_sweep


@shared_task(name="relays.tasks.sweep_relays", ignore_result=False)
def sweep_relays(relay_ids: list[str] | None = None) -> dict:
    outcomes = relay_sweep(relay_ids=relay_ids)
    return {o.relay.name: o.relay.status for o in outcomes}


@worker_ready.connect
def sweep_when_a_worker_starts(sender, **kwargs) -> None:
    # A fresh worker learns the fleet's health at once instead of one interval later.
    sweep_relays.delay()
