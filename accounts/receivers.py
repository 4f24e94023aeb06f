"""Signing out and deactivation reach the open signaling sockets.

A session cookie is checked when a socket opens, never again: without this, a signed-out or
deactivated user's open sockets kept signaling. Both events are announced after commit to the
user's group; the consumers close (4401 for the signed-out session, 4403 for every socket of a
deactivated account). Only an announcement happens here, no state changes.
"""

from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_save
from django.dispatch import receiver

from signaling.broadcast import send_to_users_on_commit

from .models import User


@receiver(user_logged_out)
def close_sockets_of_signed_out_session(sender, request, user, **kwargs) -> None:
    if user is None:
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    send_to_users_on_commit([user.pk], {"type": "user.signed_out", "session": session_key})


@receiver(post_save, sender=User)
def close_sockets_of_deactivated_user(sender, instance: User, created: bool, **kwargs) -> None:
    if not created and not instance.is_active:
        send_to_users_on_commit([instance.pk], {"type": "user.deactivated"})
