"""Celery tasks for accounts: thin wrappers that call services."""

from celery import shared_task

from .sessions import sessions_clear_expired


@shared_task(name="accounts.tasks.clear_expired_sessions")
def clear_expired_sessions() -> int:
    """Expired sessions go (Django's clearsessions). Scheduled hourly by beat."""
    return sessions_clear_expired()
