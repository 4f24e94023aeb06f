from django.contrib import admin

from config.admin_lookups import RefuseSecretLookups

from .models import Call, Participant


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    can_delete = False
    fields = ("user", "role", "joined_at", "left_at", "connection_type", "relay", "rtt_ms")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Call)
class CallAdmin(RefuseSecretLookups, admin.ModelAdmin):
    list_display = (
        "id",
        "created_by",
        "state",
        "created_at",
        "answered_at",
        "ended_at",
        "end_reason",
    )
    list_filter = ("state",)
    search_fields = ("id", "created_by__username", "participants__user__username")
    readonly_fields = (
        "id",
        "created_by",
        "state",
        "created_at",
        "answered_at",
        "ended_at",
        "end_reason",
    )
    inlines = [ParticipantInline]

    def has_add_permission(self, request):
        return False
