"""Celery tasks for integrations: thin, by id."""

from celery import shared_task

from .webhooks import webhook_deliver, webhooks_deliver_due


@shared_task(name="integrations.tasks.deliver_webhook", ignore_result=True)
def deliver_webhook(delivery_id: int) -> str | None:
    return webhook_deliver(delivery_id)


@shared_task(name="integrations.tasks.deliver_due_webhooks", ignore_result=True)
def deliver_due_webhooks() -> int:
    return webhooks_deliver_due()
