"""Writes to people's own preferences: do-not-disturb and blocks."""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction

from .models import Block, User

logger = logging.getLogger(__name__)


def user_set_do_not_disturb(*, user: User, on: bool) -> None:
    """On: nothing rings, and calls to this user go straight to missed."""
    User.objects.filter(pk=user.pk).update(do_not_disturb=on)
    user.do_not_disturb = on


def block_create(*, blocker: User, blocked: User) -> Block:
    """`blocker` stops hearing from `blocked`: no rings, no calls. Idempotent."""
    if blocker.pk == blocked.pk:
        raise ValueError("You can't block yourself.")
    try:
        with transaction.atomic():
            block = Block.objects.create(blocker=blocker, blocked=blocked)
    except IntegrityError:
        return Block.objects.get(blocker=blocker, blocked=blocked)
    logger.info("user %s blocked user %s", blocker.pk, blocked.pk)
    return block


def block_delete(*, blocker: User, blocked_id: int) -> bool:
    deleted, _ = Block.objects.filter(blocker=blocker, blocked_id=blocked_id).delete()
    return bool(deleted)
