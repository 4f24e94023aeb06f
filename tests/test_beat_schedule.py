"""Every periodic task beat is told to send exists: a name that no worker knows is dropped by
the worker, every time, with nothing to show for it but a log line."""

from __future__ import annotations

import pytest
from django.conf import settings

pytestmark = pytest.mark.smoke


def test_every_scheduled_task_is_registered():
    from config.celery import app

    app.loader.import_default_modules()  # each app's tasks, as a worker loads them
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "accounts.tasks.clear_expired_sessions" in names
    assert names <= set(app.tasks), names - set(app.tasks)
