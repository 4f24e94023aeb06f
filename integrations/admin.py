"""Integrators and their API keys in admin. A key is shown once, when it is created (the
library's admin puts it in a message); afterwards only its prefix."""

from django import forms
from django.contrib import admin
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from config.admin_lookups import RefuseSecretLookups

from .models import Integrator, IntegratorKey, Scope

# The library registers its own key model; Traverse's keys belong to an integrator (below).
if admin.site.is_registered(APIKey):
    admin.site.unregister(APIKey)


class IntegratorKeyInline(admin.TabularInline):
    model = IntegratorKey
    extra = 0
    can_delete = False
    fields = ("prefix", "name", "scopes", "created", "last_used_at", "expiry_date", "revoked")
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False  # keys are made on their own page, where the key is shown once


@admin.register(Integrator)
class IntegratorAdmin(RefuseSecretLookups, admin.ModelAdmin):
    list_display = ("slug", "name", "created_at")
    search_fields = ("slug", "name")
    inlines = [IntegratorKeyInline]


class IntegratorKeyForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, required=False
    )

    class Meta:
        model = IntegratorKey
        fields = ("integrator", "name", "scopes", "expiry_date", "revoked")


@admin.register(IntegratorKey)
class IntegratorKeyAdmin(RefuseSecretLookups, APIKeyModelAdmin):
    form = IntegratorKeyForm
    list_display = (
        "prefix",
        "name",
        "integrator",
        "scope_list",
        "created",
        "last_used_at",
        "expiry_date",
        "revoked",
    )
    list_filter = ("integrator", "revoked", "created")
    search_fields = ("name", "prefix", "integrator__slug")

    @admin.display(description="scopes")
    def scope_list(self, obj: IntegratorKey) -> str:
        return ", ".join(obj.scopes) or "—"

    def get_readonly_fields(self, request, obj=None):
        fields = tuple(super().get_readonly_fields(request, obj)) + ("last_used_at",)
        if obj is not None:
            fields += ("integrator",)  # a key never moves to another integrator
        return fields

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: its use stays on record
