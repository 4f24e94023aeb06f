"""Sessions in the database, as Django's `db` backend keeps them, read by a lookup compiled once:
every signed-in request reads its session (config.compiled). Expired ones are deleted hourly
(accounts.tasks.clear_expired_sessions): Django leaves that to the project."""

from __future__ import annotations

from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.utils import timezone

from config.compiled import CompiledLookup

_LIVE_SESSION = CompiledLookup(Session, "session_key", "expire_date__gt")


class SessionStore(db.SessionStore):
    def _get_session_from_db(self):
        session = _LIVE_SESSION.get(self.session_key, timezone.now())
        if session is None:
            self._session_key = None
        return session


def sessions_clear_expired() -> int:
    """Delete the sessions that have expired (signed-out ones are gone already). How many."""
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
