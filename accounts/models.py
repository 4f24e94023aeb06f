"""Accounts own the people: the custom user model (there from the first migration)."""

from django.contrib.auth.models import AbstractUser
from django.db import models

from .usernames import username_skeleton


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
