"""Celery tasks for relays: thin wrappers that call services."""

from celery import shared_task

from .services import relay_sweep


@shared_task(name="relays.tasks.sweep_relays", ignore_result=False)
def sweep_relays(relay_ids: list[str] | None = None) -> dict:
    outcomes = relay_sweep(relay_ids=relay_ids)
    return {o.relay.name: o.relay.status for o in outcomes}
