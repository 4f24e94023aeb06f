"""One lock order for a call's rows: the call first, then its participants.

Every transaction that writes a participant takes the call's row lock before it touches the
participant's row. Two writers that went in opposite orders deadlock, and PostgreSQL aborts
one of them: in CI a page's resume (call, then participant) met a new process's start-up reap
(participant, then the call through the call event's foreign key), the resume failed and the
page never got `resumed`.

Each writer here runs while a second connection holds the call's row lock. A writer that keeps
the order waits for the call before it locks anything else, so the participant's row stays
free; one that doesn't holds the participant's row while it waits.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from calls.models import Participant, ParticipantState
from calls.services import (
    call_disconnected,
    call_leave,
    call_resume_session,
    call_start,
    calls_expire,
    participant_media,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _raw():
    import psycopg

    s = connection.settings_dict
    return psycopg.connect(
        host=s["HOST"] or "127.0.0.1",
        port=s["PORT"] or 5432,
        user=s["USER"],
        password=s["PASSWORD"] or None,
        dbname=s["NAME"],
    )


def _disconnect(p):
    assert call_disconnected(call_id=p.call_id, user=p.user, channel_name=p.channel_name)


def _leave(p):
    call_leave(call_id=p.call_id, user=p.user, channel_name=p.channel_name)


def _media(p):
    participant_media(participant=p, audio=False, video=False, screen=True)


def _resume(p):
    assert call_resume_session(user=p.user, session=p.session, channel_name="web-2!c9")


def _expire(p):
    Participant.objects.filter(pk=p.pk).update(
        state=ParticipantState.RECONNECTING, reconnecting_since=timezone.now() - timedelta(hours=1)
    )
    assert calls_expire()["left"] == 1


WRITERS = {
    "disconnected": (_disconnect, ParticipantState.RECONNECTING),
    "leave": (_leave, ParticipantState.LEFT),
    "media": (_media, ParticipantState.JOINED),
    "resume": (_resume, ParticipantState.JOINED),
    "expire": (_expire, ParticipantState.LEFT),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_writer_locks_the_call_before_its_participants(writer, alice, bob):
    if connection.vendor != "postgresql":
        pytest.skip("row locks held from a second connection: PostgreSQL")
    run, state_after = WRITERS[writer]
    call = call_start(caller=alice, callee=bob)
    Participant.objects.filter(call=call).update(
        state=ParticipantState.JOINED, channel_name="web-1!c1", session="s-1"
    )
    p = Participant.objects.select_related("user").get(call=call, user=alice)

    holder, probe = _raw(), _raw()
    outcome: list[BaseException | None] = []

    def write():
        try:
            run(p)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)
        finally:
            connections.close_all()

    try:
        holder.execute("SELECT 1 FROM calls_call WHERE id = %s FOR UPDATE", [call.pk])
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        # Until the writer waits on a lock (the call's, when it keeps the order).
        waiting = 0
        for _ in range(100):
            waiting = probe.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()[0]
            probe.rollback()
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, "the writer never waited for the call's row"
        free = probe.execute(
            "SELECT id FROM calls_participant WHERE id = %s FOR UPDATE SKIP LOCKED", [p.pk]
        ).fetchall()
        probe.rollback()
        assert len(free) == 1, "the writer locked the participant before the call"
    finally:
        holder.rollback()
        holder.close()
        probe.close()
    thread.join(10)
    assert outcome == [None]
    assert Participant.objects.get(pk=p.pk).state == state_after
