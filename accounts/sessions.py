"""Sessions in the database, as Django's `db` backend keeps them, read by a lookup compiled once:
every signed-in request reads its session (config.compiled)."""

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
