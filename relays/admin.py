"""Relays in Django admin: status badges, write-only secret, probe-now action."""

from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from .models import CredentialGrant, ProbeResult, Relay, RelayStatus
from .services import relay_sweep

BADGE_COLOURS = {
    RelayStatus.UP: "#1a7f37",
    RelayStatus.DOWN: "#cf222e",
    RelayStatus.UNKNOWN: "#6e7781",
    "stale": "#9a6700",
}


class RelayAdminForm(forms.ModelForm):
    # Write-only: the current secret is never rendered back into the page.
    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="The coturn static-auth-secret. Write-only: leave blank to keep the current one.",
    )
    urls = forms.JSONField(
        help_text='A JSON list, e.g. ["stun:relay1.example:3478", "turn:relay1.example:3478?transport=udp"]'
    )

    class Meta:
        model = Relay
        fields = ("name", "region", "urls", "realm", "enabled", "secret")

    def clean_secret(self):
        secret = self.cleaned_data.get("secret", "")
        if not secret:
            if self.instance._state.adding:
                raise forms.ValidationError("A new relay needs its shared secret.")
            return self.instance.secret
        return secret


@admin.register(Relay)
class RelayAdmin(admin.ModelAdmin):
    form = RelayAdminForm
    list_display = (
        "name",
        "status_badge",
        "region",
        "rtt",
        "last_checked_at",
        "enabled",
        "short_error",
    )
    list_filter = ("status", "enabled", "region")
    search_fields = ("name", "region", "urls")
    readonly_fields = (
        "status_badge",
        "last_rtt_ms",
        "last_checked_at",
        "last_error",
        "recent_probes",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "region", "urls", "realm", "enabled", "secret")}),
        (
            "Health",
            {
                "fields": (
                    "status_badge",
                    "last_rtt_ms",
                    "last_checked_at",
                    "last_error",
                    "recent_probes",
                )
            },
        ),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )
    actions = ("probe_now",)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Relay):
        state = "stale" if obj.status == RelayStatus.UP and obj.is_stale() else obj.status
        return format_html(
            '<span class="relay-badge" style="background:{};color:#fff;padding:2px 8px;border-radius:10px;'
            'font-weight:600">{}</span>',
            BADGE_COLOURS.get(state, "#6e7781"),
            state,
        )

    @admin.display(description="RTT", ordering="last_rtt_ms")
    def rtt(self, obj: Relay) -> str:
        return f"{obj.last_rtt_ms:.2f} ms" if obj.last_rtt_ms is not None else "—"

    @admin.display(description="last error")
    def short_error(self, obj: Relay) -> str:
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.action(description="Probe the selected relays now")
    def probe_now(self, request, queryset):
        outcomes = relay_sweep(relay_ids=[r.pk for r in queryset if r.enabled])
        for o in outcomes:
            level = messages.SUCCESS if o.report.ok else messages.WARNING
            self.message_user(
                request, f"Relay {o.relay.name}: {o.relay.status} {o.report.error}".strip(), level
            )
        skipped = [r.name for r in queryset if not r.enabled]
        if skipped:
            self.message_user(
                request, f"Not probed (disabled): {', '.join(skipped)}", messages.INFO
            )

    @admin.display(description="recent probes")
    def recent_probes(self, obj: Relay):
        rows = obj.probe_results.order_by("-checked_at")[:10]
        return (
            format_html_join(
                "",
                "<div>{} · {} · {} · {}</div>",
                (
                    (
                        f"{p.checked_at:%Y-%m-%d %H:%M:%S}",
                        "ok" if p.ok else "failed",
                        f"{p.rtt_ms:.2f} ms" if p.rtt_ms is not None else "—",
                        p.error or "",
                    )
                    for p in rows
                ),
            )
            or "no probe yet"
        )


@admin.register(ProbeResult)
class ProbeResultAdmin(admin.ModelAdmin):
    list_display = ("relay", "checked_at", "ok", "rtt_ms", "duration_ms", "error")
    list_filter = ("ok", "relay")
    date_hierarchy = "checked_at"
    readonly_fields = ("relay", "checked_at", "ok", "rtt_ms", "duration_ms", "error", "urls")

    def has_add_permission(self, request):
        return False


@admin.register(CredentialGrant)
class CredentialGrantAdmin(admin.ModelAdmin):
    list_display = ("id", "user", "created_at", "expires_at")
    search_fields = ("id", "user__username")
    readonly_fields = ("id", "user", "relays", "created_at", "expires_at")

    def has_add_permission(self, request):
        return False
