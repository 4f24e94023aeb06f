from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from config.admin_lookups import RefuseSecretLookups

from .models import User


@admin.register(User)
class UserAdmin(RefuseSecretLookups, BaseUserAdmin):
    fieldsets = (
        *BaseUserAdmin.fieldsets,
        ("Profile", {"fields": ("display_name", "do_not_disturb")}),
    )
    list_display = ("username", "display_name", "email", "is_staff", "is_active", "last_login")
