from django.contrib import admin

from config.admin_lookups import RefuseSecretLookups

from .models import Call, CallEvent, Participant


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    can_delete = False
    fields = (
        "user",
        "role",
        "state",
        "session",
        "joined_at",
        "left_at",
        "assigned",
        "connection_type",
        "relay",
        "rtt_ms",
        "audio",
        "video",
    )
    readonly_fields = fields

    @admin.display(description="relays handed out")
    def assigned(self, obj: Participant) -> str:
        """What the device was given for the call (best first); `relay` is the path it used."""
        names = [a.relay.name for a in obj.relay_assignments.select_related("relay")]
        return ", ".join(names) or "—"

    def has_add_permission(self, request, obj=None):
        return False


class CallEventInline(admin.TabularInline):
    """The call's timeline: every transition with its time."""

    model = CallEvent
    extra = 0
    can_delete = False
    fields = ("at", "name", "user", "detail")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Call)
class CallAdmin(RefuseSecretLookups, admin.ModelAdmin):
    list_display = (
        "id",
        "created_by",
        "kind",
        "state",
        "created_at",
        "answered_at",
        "ended_at",
        "end_reason",
        "missed",
    )
    list_filter = ("state", "end_reason", "kind", "missed")
    search_fields = ("id", "created_by__username", "participants__user__username")
    readonly_fields = (
        "id",
        "created_by",
        "kind",
        "state",
        "created_at",
        "answered_at",
        "connected_at",
        "ended_at",
        "end_reason",
        "missed",
        "missed_seen",
    )
    inlines = [ParticipantInline, CallEventInline]

    def has_add_permission(self, request):
        return False
