"""Accounts own the people: the custom user model (there from the first migration)."""

from typing import ClassVar

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.db import models

from config.compiled import CompiledLookup

from .usernames import username_skeleton


class UserManager(DjangoUserManager):
    def get(self, *args, **kwargs):
        """Django's, with a lookup of one primary key (an int) compiled once: every signed-in
        request reads its user this way (ModelBackend.get_user)."""
        pk = kwargs.get("pk")
        if args or len(kwargs) != 1 or type(pk) is not int:
            return super().get(*args, **kwargs)
        user = _user_by_pk.get(pk, using=self.db)
        if user is None:
            raise self.model.DoesNotExist(f"No {self.model._meta.object_name} with pk {pk}.")
        return user


class User(AbstractUser):
    display_name = models.CharField(max_length=80, blank=True)
    # The username's look-alike skeleton (accounts.usernames): sign-up refuses a name whose
    # skeleton another account has. Derived from the username on every save, whoever saves
    # (sign-up, admin, createsuperuser), which is why it is set here and not in a service.
    username_skeleton = models.CharField(max_length=150, db_index=True, editable=False, default="")
    # Calls go straight to missed, and nothing rings.
    do_not_disturb = models.BooleanField(default=False)
    # An integrator's end user (integrations): made and named over the API, reachable only by
    # the same integrator's users, and never by people who signed up here (nor they by them).
    integrator = models.ForeignKey(
        "integrations.Integrator",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="users",
    )
    # NULL, not "", when there is none: deleted end users keep their integrator, and NULLs don't
    # collide in the unique constraint below.
    external_id = models.CharField(max_length=80, null=True, blank=True)  # noqa: DJ001

    objects: ClassVar[UserManager] = UserManager()

    class Meta(AbstractUser.Meta):
        constraints = [
            models.UniqueConstraint(
                fields=["integrator", "external_id"], name="one_user_per_integrator_external_id"
            )
        ]

    def save(self, *args, **kwargs):
        self.username_skeleton = username_skeleton(self.username)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and "username" in update_fields:
            kwargs["update_fields"] = {*update_fields, "username_skeleton"}
        super().save(*args, **kwargs)

    def can_reach(self, other) -> bool:
        """Whether this account may ring, invite or name `other`: both signed up here, or both
        the same integrator's users."""
        return self.integrator_id == other.integrator_id

    def label(self) -> str:
        return self.display_name or self.username

    def card(self) -> dict:
        """How signaling names a person: the username too, since display names are free text."""
        return {"id": self.pk, "username": self.username, "name": self.label()}


_user_by_pk = CompiledLookup(User, "pk")


class Block(models.Model):
    """`blocker` no longer hears from `blocked`: no rings, no calls; `blocked` sees "unavailable"."""

    blocker = models.ForeignKey(User, on_delete=models.CASCADE, related_name="blocks")
    blocked = models.ForeignKey(User, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["blocker", "blocked"], name="one_block_per_pair")
        ]

    def __str__(self) -> str:
        return f"{self.blocker} blocks {self.blocked}"
