"""The Celery app: broker and schedule come from config.settings (CELERY_* names)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("traverse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
