"""Relays in Django admin: a fleet overview, status badges, charts, write-only secrets, and
actions (probe, drain, disable, enable) that call services and record who did what."""

import ipaddress

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from calls.selectors import path_stats, relays_of_call
from config.admin_lookups import RefuseSecretLookups

from .charts import paths_svg, rtt_loss_svg
from .models import CredentialGrant, GrantTraffic, ProbeResult, RegionRange, Relay, RelayEvent
from .scoring import eligible
from .selectors import (
    explain_selection,
    relay_candidates,
    relay_load,
    relay_probe_history,
    relay_traffic_since,
    stun_fallback_urls,
)
from .services import (
    relay_create,
    relay_disable,
    relay_drain,
    relay_enable,
    relay_set_unsafe_override,
    relay_stage_next_secret,
    relay_sweep,
    relay_update,
    relay_validate,
)
from .states import stale_after

BADGE_COLOURS = {
    "up": "#1a7f37",
    "degraded": "#bf8700",
    "down": "#cf222e",
    "unknown": "#6e7781",
    "stale": "#8250df",
    "unsafe": "#a40e26",
    "draining": "#0969da",
    "disabled": "#57606a",
}


def badge(text: str, colour_key: str | None = None):
    return format_html(
        '<span class="relay-badge relay-badge-{}" style="background:{};color:#fff;padding:1px 8px;'
        "border-radius:10px;font-weight:600;font-size:11px;margin:0 3px 2px 0;white-space:nowrap;"
        'display:inline-block">{}</span>',
        colour_key or text,
        BADGE_COLOURS.get(colour_key or text, "#6e7781"),
        text,
    )


def relay_badges(relay: Relay):
    parts = [badge(relay.display_status())]
    if relay.unsafe:
        parts.append(badge("unsafe" + (" (override)" if relay.unsafe_override else ""), "unsafe"))
    if relay.draining:
        parts.append(badge("draining"))
    if not relay.enabled:
        parts.append(badge("disabled"))
    return format_html_join("", "{}", ((p,) for p in parts))


class RelayAdminForm(forms.ModelForm):
    # Write-only: no secret is ever rendered back into the page.
    secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="The coturn static-auth-secret. Write-only: leave blank to keep the current one. "
        "To change it without breaking calls, stage a next secret instead.",
    )
    next_secret = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Rotation: configure coturn to accept both secrets, then stage the new one here. "
        "Traverse switches to it once a probe with it succeeds, and keeps the old one until every "
        "credential issued with it has expired.",
    )
    urls = forms.JSONField(
        help_text='A JSON list, e.g. ["stun:relay1.example:3478", "turn:relay1.example:3478?transport=udp"]'
    )

    weight = forms.FloatField(
        required=False,
        initial=1.0,
        min_value=0.1,
        max_value=10.0,
        help_text="The admin's preference: 2 makes it look twice as good, 0.5 half as good "
        "(empty: 1).",
    )

    private_reason = forms.CharField(
        required=False,
        label="Why a private address",
        help_text="Needed when a URL resolves to a loopback, private, link-local, CGNAT or "
        "documentation address (or does not resolve). Recorded as an event.",
    )

    class Meta:
        model = Relay
        fields = (
            "name",
            "region",
            "failure_domain",
            "capacity",
            "weight",
            "urls",
            "realm",
            "enabled",
            "secret",
            "next_secret",
            "allow_private",
            "unsafe_override",
        )

    def clean_secret(self):
        secret = self.cleaned_data.get("secret", "")
        if not secret:
            if self.instance._state.adding:
                raise forms.ValidationError("A new relay needs its shared secret.")
            return self.instance.secret
        return secret

    def clean_next_secret(self):
        return self.cleaned_data.get("next_secret", "") or self.instance.next_secret

    def clean(self):
        data = super().clean()
        if "urls" in data and "secret" in data:
            reason = data.get("private_reason", "")
            if not reason and self.instance.allow_private:
                reason = "allowed before"
            try:
                relay_validate(
                    urls=data["urls"],
                    secret=data["secret"],
                    allow_private=bool(data.get("allow_private")),
                    private_reason=reason,
                )
            except ValidationError as exc:
                self.add_error(None, exc)
        return data


def load_text(c) -> str:
    """A relay's load as selection sees it, and where the figure comes from."""
    n = f"{c.allocations} of {c.capacity}" if c.capacity else str(c.allocations)
    return n + (" allocations" if c.load_source == "published" else " unexpired grants")


@admin.register(Relay)
class RelayAdmin(RefuseSecretLookups, admin.ModelAdmin):
    form = RelayAdminForm
    change_list_template = "admin/relays/relay/change_list.html"
    list_display = (
        "name",
        "status_badges",
        "transports",
        "region",
        "rtt",
        "loss",
        "last_checked_at",
        "enabled",
        "short_error",
    )
    list_filter = ("status", "enabled", "draining", "unsafe", "region")
    search_fields = ("name", "region", "urls")
    readonly_fields = (
        "load",
        "status_badges",
        "transports",
        "health_figures",
        "last_checked_at",
        "last_error",
        "safety",
        "rotation",
        "chart",
        "recent_events",
        "recent_probes",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "urls", "realm", "enabled")}),
        (
            "Placement (who gets this relay)",
            {"fields": ("region", "failure_domain", "capacity", "weight", "load")},
        ),
        ("Secrets (write-only)", {"fields": ("secret", "next_secret", "rotation")}),
        (
            "Health",
            {
                "fields": (
                    "status_badges",
                    "transports",
                    "health_figures",
                    "last_checked_at",
                    "last_error",
                    "chart",
                )
            },
        ),
        ("Safety", {"fields": ("safety", "allow_private", "private_reason", "unsafe_override")}),
        ("History", {"fields": ("recent_events", "recent_probes", "created_at", "updated_at")}),
    )
    actions = ("probe_now", "drain", "disable", "enable")

    # --- columns ------------------------------------------------------------------------
    @admin.display(description="load")
    def load(self, obj: Relay):
        if obj.pk is None:
            return "—"
        n, source = relay_load(relay=obj)
        if source == "published":
            what = "live allocations, as the relay published them"
        else:
            what = "unexpired grants (the relay publishes no allocations: see redis-statsdb)"
            if obj.stats_at is not None:
                when = timezone.localtime(obj.stats_at).strftime("%Y-%m-%d %H:%M:%S")
                what = (
                    f"unexpired grants (the relay stopped publishing its allocations; last heard "
                    f"{when}: check its redis-statsdb line and that Redis)"
                )
        moved = relay_traffic_since(relay=obj, hours=24)
        traffic = f"; {filesizeformat(moved)} relayed in the last 24 h" if moved else ""
        if obj.capacity:
            return f"{n} of {obj.capacity} ({n / obj.capacity:.0%}), {what}{traffic}"
        return f"{n} {what}, no capacity set{traffic}"

    @admin.display(description="status", ordering="status")
    def status_badges(self, obj: Relay):
        return relay_badges(obj)

    @admin.display(description="transports")
    def transports(self, obj: Relay):
        if not obj.transport_status:
            return "—"
        return format_html_join(
            "",
            "{}",
            (
                (badge(f"{k} {v}", v if v != "up" else "up"),)
                for k, v in sorted(obj.transport_status.items())
            ),
        )

    @admin.display(description="RTT", ordering="last_rtt_ms")
    def rtt(self, obj: Relay) -> str:
        return f"{obj.last_rtt_ms:.2f} ms" if obj.last_rtt_ms is not None else "—"

    @admin.display(description="loss", ordering="last_loss")
    def loss(self, obj: Relay) -> str:
        return f"{obj.last_loss * 100:.1f}%" if obj.last_loss is not None else "—"

    @admin.display(description="last error")
    def short_error(self, obj: Relay) -> str:
        return (obj.last_error[:80] + "…") if len(obj.last_error) > 80 else obj.last_error

    @admin.display(description="figures")
    def health_figures(self, obj: Relay) -> str:
        jitter = f"{obj.last_jitter_ms:.2f} ms" if obj.last_jitter_ms is not None else "—"
        if obj.last_loss is None and obj.audited_at and not obj.unsafe:
            # A safe relay whose only address is private refuses itself as a peer.
            return f"STUN RTT {self.rtt(obj)} · data plane not measurable from here (the relay refuses its own private address as a peer)"
        return f"STUN RTT {self.rtt(obj)} · data-plane loss {self.loss(obj)} · jitter {jitter}"

    @admin.display(description="safety audit")
    def safety(self, obj: Relay):
        if obj.audited_at is None:
            return "not audited yet (the audit runs once the relay answers a probe)"
        if obj.unsafe:
            return format_html(
                "{} grants permission to private peers: <code>{}</code>. Not assigned{}.",
                badge("unsafe"),
                ", ".join(obj.accepted_peers),
                " (overridden by an admin)" if obj.unsafe_override else " unless overridden",
            )
        return format_html(
            "{} refuses every private peer (audited {} UTC)",
            badge("safe", "up"),
            f"{obj.audited_at:%Y-%m-%d %H:%M:%S}",
        )

    @admin.display(description="rotation")
    def rotation(self, obj: Relay) -> str:
        parts = []
        if obj.next_secret:
            parts.append("a next secret is staged; issuing switches once a probe with it succeeds")
        if obj.previous_secret:
            parts.append(
                f"the old secret is kept until {obj.previous_secret_until:%Y-%m-%d %H:%M:%S} UTC"
            )
        return "; ".join(parts) or "no rotation in progress"

    @admin.display(description="RTT and loss, last 6 hours")
    def chart(self, obj: Relay):
        history = relay_probe_history(relay=obj, hours=6)
        return mark_safe(  # noqa: S308 - built from numbers and an escaped title only
            rtt_loss_svg(
                [(p.checked_at, p.rtt_ms, p.loss) for p in history],
                title=f"{obj.name} RTT and loss",
                max_gap_s=stale_after(settings.RELAY_SWEEP_INTERVAL).total_seconds(),
            )
        )

    @admin.display(description="events")
    def recent_events(self, obj: Relay):
        rows = obj.events.select_related("actor")[:15]
        return (
            format_html_join(
                "",
                "<div>{} · <strong>{}</strong>{} {}</div>",
                (
                    (
                        f"{e.at:%Y-%m-%d %H:%M:%S}",
                        e.kind,
                        f" by {e.actor.get_username()}" if e.actor else "",
                        e.detail[:200],
                    )
                    for e in rows
                ),
            )
            or "no events yet"
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
                        p.observation or ("ok" if p.ok else "failed"),
                        f"{p.rtt_ms:.2f} ms" if p.rtt_ms is not None else "—",
                        p.error or "",
                    )
                    for p in rows
                ),
            )
            or "no probe yet"
        )

    # --- saving -------------------------------------------------------------------------
    def save_model(self, request, obj: Relay, form, change):
        """Every write goes through the registry services, so each records its event."""
        data = form.cleaned_data
        fields = {
            "urls": data["urls"],
            "secret": data["secret"],
            "region": data.get("region", ""),
            "realm": data.get("realm", ""),
            "failure_domain": data.get("failure_domain", ""),
            "capacity": data.get("capacity"),
            "weight": data.get("weight") or 1.0,
            "allow_private": bool(data.get("allow_private")),
            "private_reason": data.get("private_reason", ""),
            "actor": request.user,
        }
        if not change:
            relay = relay_create(name=data["name"], enabled=data.get("enabled", True), **fields)
        else:
            relay = relay_update(relay=Relay.objects.get(pk=obj.pk), name=data["name"], **fields)
            if "enabled" in form.changed_data:
                toggle = relay_enable if data.get("enabled") else relay_disable
                relay = toggle(relay=relay, actor=request.user)
        if "next_secret" in form.changed_data and data.get("next_secret"):
            relay_stage_next_secret(relay=relay, secret=data["next_secret"], actor=request.user)
        if bool(data.get("unsafe_override")) != relay.unsafe_override:
            relay_set_unsafe_override(
                relay=relay, override=bool(data.get("unsafe_override")), actor=request.user
            )
        relay.refresh_from_db()
        obj.__dict__.update(relay.__dict__)  # the admin logs and redirects with `obj`

    # --- actions ------------------------------------------------------------------------
    @admin.action(description="Probe the selected relays now")
    def probe_now(self, request, queryset):
        outcomes = relay_sweep(relay_ids=[r.pk for r in queryset if r.enabled], force=True)
        for o in outcomes:
            level = (
                messages.SUCCESS
                if o.observation == "ok" and not o.relay.unsafe
                else messages.WARNING
            )
            self.message_user(
                request, f"Relay {o.relay.name}: {o.relay.status} {o.report.error}".strip(), level
            )
        skipped = [r.name for r in queryset if not r.enabled]
        if skipped:
            self.message_user(
                request, f"Not probed (disabled): {', '.join(skipped)}", messages.INFO
            )

    @admin.action(description="Drain: no new assignments, current credentials run out")
    def drain(self, request, queryset):
        for relay in queryset:
            relay_drain(relay=relay, actor=request.user)
        self.message_user(request, f"Draining {queryset.count()} relay(s).", messages.SUCCESS)

    @admin.action(description="Disable: no probes, no assignments")
    def disable(self, request, queryset):
        for relay in queryset:
            relay_disable(relay=relay, actor=request.user)
        self.message_user(request, f"Disabled {queryset.count()} relay(s).", messages.SUCCESS)

    @admin.action(description="Enable (and stop draining)")
    def enable(self, request, queryset):
        for relay in queryset:
            relay_enable(relay=relay, actor=request.user)
        self.message_user(
            request,
            f"Enabled {queryset.count()} relay(s); they are probed afresh.",
            messages.SUCCESS,
        )

    # --- fleet overview -----------------------------------------------------------------
    def get_urls(self):
        return [
            path("fleet/", self.admin_site.admin_view(self.fleet_view), name="relays_relay_fleet"),
            path(
                "explain/",
                self.admin_site.admin_view(self.explain_view),
                name="relays_relay_explain",
            ),
            *super().get_urls(),
        ]

    def explain_view(self, request):
        """How every relay scores for a sample caller (staff: the admin site's own check)."""
        ip = request.GET.get("ip", "").strip()
        region = request.GET.get("region", "").strip()[:64]
        call = request.GET.get("call", "").strip()[:64]
        error = ""
        if ip:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                error, ip = f"{ip!r} is not an IP address.", ""
        try:
            peers = relays_of_call(call)
        except ValueError as exc:
            error, call, peers = str(exc), "", []
        context = {
            **self.admin_site.each_context(request),
            "title": "Which relays a caller gets",
            "opts": self.model._meta,
            "ip": ip,
            "region": region,
            "call": call,
            "error": error,
            "explained": explain_selection(region=region, ip=ip or None, peers=peers),
        }
        return render(request, "admin/relays/explain.html", context)

    def fleet_view(self, request):
        relays = list(Relay.objects.all())
        now = timezone.now()
        counts: dict[str, int] = {}
        for r in relays:
            key = "disabled" if not r.enabled else r.display_status(now)
            counts[key] = counts.get(key, 0) + 1
        cards = [
            {
                "relay": r,
                "badges": relay_badges(r),
                "transports": self.transports(r),
                "chart": mark_safe(  # noqa: S308 - numbers and an escaped title only
                    rtt_loss_svg(
                        [
                            (p.checked_at, p.rtt_ms, p.loss)
                            for p in relay_probe_history(relay=r, hours=1)
                        ],
                        title=f"{r.name} RTT and loss",
                        max_gap_s=stale_after(settings.RELAY_SWEEP_INTERVAL).total_seconds(),
                    )
                ),
            }
            for r in relays
        ]
        fresh = stale_after(settings.RELAY_SWEEP_INTERVAL)
        candidates = relay_candidates(now=now)
        assignable = {c.id for c in candidates if eligible(c, now=now, stale_after=fresh)}
        load = {c.id: c for c in candidates}
        for card in cards:
            c = load.get(str(card["relay"].pk))
            card["assignable"] = str(card["relay"].pk) in assignable
            card["load"] = load_text(c) if c else "—"
        paths = path_stats(days=settings.FLEET_PATH_DAYS)
        shares = [
            {
                **row,
                "total": row["direct"] + row["relayed"],
                "direct_pct": round(100 * row["direct"] / max(1, row["direct"] + row["relayed"])),
            }
            for row in paths["networkTypes"]
        ]
        totals = {
            key: sum(d[key] for d in paths["days"]) for key in ("direct", "relayed", "failed")
        }
        context = {
            **self.admin_site.each_context(request),
            "title": "Relay fleet",
            "paths": paths,
            "path_days": settings.FLEET_PATH_DAYS,
            "path_totals": totals,
            "path_relayed_pct": round(
                100 * totals["relayed"] / max(1, totals["direct"] + totals["relayed"])
            ),
            "path_shares": shares,
            "paths_chart": mark_safe(  # noqa: S308 - numbers and escaped labels only
                paths_svg(paths["days"], title="Calls per day: direct, relayed, failed")
            ),
            "assignable": len(assignable),
            "stun_fallback": stun_fallback_urls() if not assignable else [],
            "opts": self.model._meta,
            "cards": cards,
            "counts": sorted(counts.items()),
            "unsafe": sum(1 for r in relays if r.unsafe),
        }
        return render(request, "admin/relays/fleet.html", context)


@admin.register(ProbeResult)
class ProbeResultAdmin(RefuseSecretLookups, admin.ModelAdmin):
    list_display = (
        "relay",
        "checked_at",
        "observation",
        "rtt_ms",
        "loss",
        "jitter_ms",
        "duration_ms",
        "error",
    )
    list_filter = ("observation", "ok", "relay")
    date_hierarchy = "checked_at"
    readonly_fields = (
        "relay",
        "checked_at",
        "ok",
        "observation",
        "rtt_ms",
        "loss",
        "jitter_ms",
        "duration_ms",
        "error",
        "urls",
        "data_plane",
        "audit",
        "credentials",
    )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(RegionRange)
class RegionRangeAdmin(admin.ModelAdmin):
    """Which caller addresses are in which region: read when a client declares no region."""

    list_display = ("network", "region", "note")
    list_filter = ("region",)
    search_fields = ("network", "region", "note")


@admin.register(RelayEvent)
class RelayEventAdmin(RefuseSecretLookups, admin.ModelAdmin):
    list_display = ("at", "relay", "kind", "actor", "detail", "delivered_at")
    list_filter = ("kind", "relay")
    search_fields = ("relay__name", "detail", "actor__username")
    date_hierarchy = "at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class GrantHolderFilter(admin.SimpleListFilter):
    """Credentials still valid that a deactivated account holds: TURN REST credentials can't be
    revoked one by one, so an operator who must cut them off rotates those relays' secrets."""

    title = "holder"
    parameter_name = "holder"

    def lookups(self, request, model_admin):
        return [("deactivated-valid", "deactivated account, still valid")]

    def queryset(self, request, queryset):
        if self.value() == "deactivated-valid":
            return queryset.filter(user__is_active=False, expires_at__gt=timezone.now())
        return queryset


@admin.register(CredentialGrant)
class CredentialGrantAdmin(RefuseSecretLookups, admin.ModelAdmin):
    list_display = ("id", "user", "user_active", "relay_names", "created_at", "expires_at")
    list_filter = (GrantHolderFilter, "created_at")
    search_fields = ("id", "user__username")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user").prefetch_related("relays")

    @admin.display(description="account active", boolean=True, ordering="user__is_active")
    def user_active(self, obj: CredentialGrant) -> bool:
        return obj.user.is_active

    @admin.display(description="relays")
    def relay_names(self, obj: CredentialGrant) -> str:
        return ", ".join(r.name for r in obj.relays.all())

    readonly_fields = ("id", "user", "relays", "created_at", "expires_at")

    def has_add_permission(self, request):
        return False


@admin.register(GrantTraffic)
class GrantTrafficAdmin(RefuseSecretLookups, admin.ModelAdmin):
    """Bytes per grant and relay, as the relays' coturn published them (relay_stats)."""

    list_display = (
        "grant_id",
        "user",
        "relay",
        "received",
        "sent",
        "allocations",
        "first_at",
        "last_at",
    )
    list_filter = ("relay", "last_at")
    search_fields = ("grant_id", "user__username", "relay__name")
    list_select_related = ("user", "relay")
    readonly_fields = list_display

    @admin.display(description="received from the caller", ordering="received_bytes")
    def received(self, obj: GrantTraffic) -> str:
        return filesizeformat(obj.received_bytes)

    @admin.display(description="sent to the caller", ordering="sent_bytes")
    def sent(self, obj: GrantTraffic) -> str:
        return filesizeformat(obj.sent_bytes)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
