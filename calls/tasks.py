"""Celery tasks for calls: thin wrappers that call services."""

from celery import shared_task

from signaling.services import presence_reap_dead_nodes

from .services import calls_expire, chat_prune


@shared_task(name="calls.tasks.reap_calls")
def reap_calls() -> dict:
    """Dead server processes' sockets start their grace window; grace windows and unanswered
    rings that ran out end. Scheduled every CALL_REAP_INTERVAL by beat."""
    dead = presence_reap_dead_nodes()
    return {"dead_processes": len(dead), **calls_expire()}


@shared_task(name="calls.tasks.prune_chat")
def prune_chat() -> int:
    """Chat older than CHAT_RETENTION_DAYS goes. Scheduled hourly by beat."""
    return chat_prune()
