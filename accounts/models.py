"""Accounts own the people: the custom user model (there from the first migration)."""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    display_name = models.CharField(max_length=80, blank=True)

    def label(self) -> str:
        return self.display_name or self.username
