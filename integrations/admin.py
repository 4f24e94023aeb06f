"""Integrators and their API keys in admin. A key is shown once, when it is created (the
library's admin puts it in a message); afterwards only its prefix."""

from django import forms
from django.contrib import admin, messages
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey

from config.admin_lookups import RefuseSecretLookups

from .models import (
    Integrator,
    IntegratorKey,
    Scope,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)
from .webhooks import webhook_redeliver

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


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=WebhookEventType.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every event.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("integrator", "url", "events", "enabled", "description")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(RefuseSecretLookups, admin.ModelAdmin):
    """Endpoints; the signing secret is shown once, when the endpoint is made."""

    form = WebhookEndpointForm
    list_display = ("url", "integrator", "event_list", "enabled", "created_at")
    list_filter = ("integrator", "enabled")

    @admin.display(description="events")
    def event_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events) or "all"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            messages.warning(
                request,
                f"The signing secret for {obj.url} is: {obj.secret} . Store it now: it is not "
                "shown again.",
            )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(RefuseSecretLookups, admin.ModelAdmin):
    """The delivery log: every try's outcome, and "deliver again"."""

    list_display = (
        "message_type",
        "message",
        "endpoint",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("state", "endpoint__integrator", "message__type")
    search_fields = ("message__id", "endpoint__url")
    list_select_related = ("message", "endpoint")
    readonly_fields = list_display + ("payload",)
    actions = ("redeliver",)

    @admin.display(description="event", ordering="message__type")
    def message_type(self, obj: WebhookDelivery) -> str:
        return obj.message.type

    @admin.display(description="payload")
    def payload(self, obj: WebhookDelivery) -> str:
        import json

        return json.dumps(obj.message.payload, indent=2)

    @admin.action(description="Deliver again now")
    def redeliver(self, request, queryset):
        for delivery in queryset:
            webhook_redeliver(delivery)
        messages.success(request, f"{queryset.count()} delivery(ies) queued again.")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
