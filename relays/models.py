"""The relay registry: relays, what their probes found, what happened to them, and the
credentials handed out for them."""

from __future__ import annotations

import ipaddress
import secrets
import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinLengthValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from .ice_urls import IceUrl, IceUrlError, parse_ice_url
from .nettest import SENTENCES, NetworkType, Verdict
from .states import Observation, RelayEventKind, RelayStatus, published_lately, stale_after


def validate_ice_urls(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("Give at least one ICE URL.")
    for text in value:
        if not isinstance(text, str):
            raise ValidationError(f"{text!r} is not a string.")
        try:
            parse_ice_url(text)
        except IceUrlError as exc:
            raise ValidationError(str(exc)) from exc


# A shared secret shorter than this is guessable offline from one captured credential.
MIN_SECRET_LENGTH = 16


STATUS_LABELS = {
    RelayStatus.UNKNOWN: "Unknown",
    RelayStatus.UP: "Up",
    RelayStatus.DEGRADED: "Degraded",
    RelayStatus.DOWN: "Down",
}
EVENT_LABELS = {
    RelayEventKind.UP: "Up",
    RelayEventKind.DEGRADED: "Degraded",
    RelayEventKind.DOWN: "Down",
    RelayEventKind.UNSAFE: "Unsafe",
    RelayEventKind.SAFE: "Safe again",
    RelayEventKind.DRAINED: "Drained",
    RelayEventKind.DISABLED: "Disabled",
    RelayEventKind.ENABLED: "Enabled",
    RelayEventKind.SECRET_STAGED: "Next secret staged",
    RelayEventKind.SECRET_ROTATED: "Secret rotated",
    RelayEventKind.OVERRIDE: "Unsafe override changed",
    RelayEventKind.CREATED: "Registered",
    RelayEventKind.UPDATED: "Settings changed",
    RelayEventKind.ALLOW_PRIVATE: "Private address allowed",
    RelayEventKind.REPORTED: "Reported failing by a client",
}


# Names the API's relay routes take for themselves (/api/v1/relays/<name>/ would never reach
# a relay so named).
RESERVED_RELAY_NAMES = frozenset({"explain", "failures", "gather"})


def validate_relay_name(value: str) -> None:
    if value.lower() in RESERVED_RELAY_NAMES:
        raise ValidationError(
            f"{value!r} is reserved (the API uses /api/v1/relays/{value}/); choose another name."
        )


class Relay(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.SlugField(max_length=64, unique=True, validators=[validate_relay_name])
    region = models.CharField(
        max_length=64,
        blank=True,
        help_text="Where the relay is (e.g. eu-west). Callers in the same region prefer it.",
    )
    failure_domain = models.CharField(
        max_length=64,
        blank=True,
        help_text="What fails together with it (a data centre, a provider). A caller's fallback "
        "relay is taken from another region, else another failure domain.",
    )
    capacity = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Allocations it can carry. At capacity it gets no new callers; below, its "
        "load counts against it. Empty: no limit.",
    )
    weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.1), MaxValueValidator(10.0)],
        help_text="The admin's preference: 2 makes it look twice as good, 0.5 half as good.",
    )
    urls = models.JSONField(
        validators=[validate_ice_urls],
        help_text='ICE URLs, e.g. ["turn:relay1.example:3478?transport=udp", '
        '"turns:relay1.example:443?transport=tcp"].',
    )
    realm = models.CharField(max_length=128, blank=True)
    enabled = models.BooleanField(default=True)
    # The shared secret of coturn's use-auth-secret. Write-only: never in API output, admin
    # lists or logs (see __repr__ and RelayAdminForm). So are the next and previous secrets.
    secret = models.CharField(max_length=256, validators=[MinLengthValidator(MIN_SECRET_LENGTH)])
    # Rotation: issuing switches to next_secret once a probe with it succeeds; the old secret is
    # kept until the longest credential issued with it has expired.
    next_secret = models.CharField(max_length=256, blank=True)
    previous_secret = models.CharField(max_length=256, blank=True)
    previous_secret_until = models.DateTimeField(null=True, blank=True)
    # Drain: no new assignments; credentials already handed out run out on their own.
    draining = models.BooleanField(default=False)

    status = models.CharField(
        max_length=16, choices=list(STATUS_LABELS.items()), default=RelayStatus.UNKNOWN
    )
    transport_status = models.JSONField(
        default=dict, blank=True
    )  # {"stun": "up", "udp": "down", …}
    worse_streak = models.PositiveSmallIntegerField(default=0)
    better_streak = models.PositiveSmallIntegerField(default=0)
    last_rtt_ms = models.FloatField(null=True, blank=True)
    last_loss = models.FloatField(null=True, blank=True)
    last_jitter_ms = models.FloatField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # The safety audit: a relay that grants permission towards private peers is unsafe and is
    # never assigned, unless an admin overrides that on purpose.
    unsafe = models.BooleanField(default=False)
    accepted_peers = models.JSONField(default=list, blank=True)
    unsafe_override = models.BooleanField(
        default=False,
        help_text="Assign this relay even though the safety audit finds it reaches private "
        "addresses. Only for test rigs on loopback; never in production.",
    )
    # Where the relay itself is: registering one whose URLs resolve to a loopback, private,
    # link-local, CGNAT or documentation address (or don't resolve) needs this, with a reason
    # recorded as an event (relays.addresses).
    allow_private = models.BooleanField(
        default=False,
        help_text="This relay's own address is not public (a test rig, a lab, a private "
        "network). Give the reason below; it is recorded.",
    )
    deep_checked_at = models.DateTimeField(null=True, blank=True)
    # When the safety audit last actually ran (a relay that never answered has not been audited,
    # whatever else the deep checks did).
    audited_at = models.DateTimeField(null=True, blank=True)
    # What the relay itself says (coturn's redis-statsdb, relays.allocations): callers'
    # allocations live on it now, and when it last said anything. Load falls back to unexpired
    # grants where it doesn't publish.
    live_allocations = models.PositiveIntegerField(default=0)
    stats_at = models.DateTimeField(null=True, blank=True)
    # Sweep claims: one worker owns a relay's probe per interval (a conditional UPDATE).
    claimed_until = models.DateTimeField(null=True, blank=True)
    claim_token = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["enabled", "status"])]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Relay {self.name} {self.status}>"

    def ice_urls(self) -> list[IceUrl]:
        return [parse_ice_url(u) for u in self.urls]

    def is_stale(self, now=None) -> bool:
        """No probe newer than three sweep intervals: we no longer know it works."""
        if self.last_checked_at is None:
            return True
        now = now or timezone.now()
        return now - self.last_checked_at > stale_after(settings.RELAY_SWEEP_INTERVAL)

    @property
    def has_turn_url(self) -> bool:
        """Only a relay with a turn:/turns: URL can relay; a STUN-only entry is never handed out."""
        return any(u.is_turn for u in self.ice_urls())

    def publishes_stats(self, now=None) -> bool:
        """Its coturn published allocation events lately (the prober's own allocation, at
        every sweep, is enough)."""
        return published_lately(
            self.stats_at,
            now=now or timezone.now(),
            sweep_interval=settings.RELAY_SWEEP_INTERVAL,
        )

    def display_safety(self) -> str:
        """What admins and the CLI see: "not audited yet" until an audit has actually run."""
        if self.audited_at is None:
            return "not audited yet"
        return "unsafe" if self.unsafe else "safe"

    def display_status(self, now=None) -> str:
        """What admins and the CLI see: the stored status, or stale when too old to trust."""
        if self.status != RelayStatus.UNKNOWN and self.is_stale(now):
            return "stale"
        return self.status


class ProbeResult(models.Model):
    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="probe_results")
    checked_at = models.DateTimeField(default=timezone.now, db_index=True)
    ok = models.BooleanField()
    observation = models.CharField(
        max_length=8, blank=True, choices=[(o.value, o.value) for o in Observation]
    )
    rtt_ms = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    jitter_ms = models.FloatField(null=True, blank=True)
    duration_ms = models.FloatField()
    error = models.TextField(blank=True)
    urls = models.JSONField(default=list)  # [{url, kind, transport, ok, ms, error, detail}]
    data_plane = models.JSONField(null=True, blank=True)
    audit = models.JSONField(null=True, blank=True)
    credentials = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["relay", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.relay_id} {'ok' if self.ok else 'failed'} at {self.checked_at:%H:%M:%S}"


def new_grant_id() -> str:
    return "g_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


class CredentialGrant(models.Model):
    """One issue of TURN credentials. Its id is the opaque part of the TURN username, so relay
    logs can be traced back to a caller here without the relay ever seeing a name or email."""

    id = models.CharField(primary_key=True, max_length=32, default=new_grant_id, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="credential_grants"
    )
    relays = models.ManyToManyField(Relay, related_name="grants", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.id


class RelayEvent(models.Model):
    """Something that happened to a relay: a health change, or an admin's action with who did
    it and when. Webhooks (issue 6) deliver these and set `delivered_at`."""

    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=20, choices=list(EVENT_LABELS.items()))
    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    detail = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.relay_id} {self.kind} at {self.at:%Y-%m-%d %H:%M:%S}"


def validate_network(value: str) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValidationError(f"{value!r} is not an IP network (e.g. 203.0.113.0/24).") from exc


class RegionRange(models.Model):
    """A range of caller addresses and the region they are in: the admin's table, read when a
    client declares no region. The longest matching prefix wins."""

    network = models.CharField(
        max_length=64,
        unique=True,
        validators=[validate_network],
        help_text="An IPv4 or IPv6 network, e.g. 203.0.113.0/24 or 2001:db8::/32.",
    )
    region = models.CharField(max_length=64, help_text="The region, as relays name it.")
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["network"]

    def __str__(self) -> str:
        return f"{self.network} → {self.region}"

    def clean(self) -> None:
        if self.network:
            validate_network(self.network)
            self.network = str(ipaddress.ip_network(self.network, strict=False))


class ClientRelayRtt(models.Model):
    """What clients on one network measured to one relay: a mean of the selected candidate
    pair's round trip, each sample's weight halving every CLIENT_RTT_HALF_LIFE_HOURS. Selection
    prefers it to the prober's figure for callers on that network."""

    class Kind(models.TextChoices):
        PAIR = "pair", "Selected pair's round trip"
        GATHER = "gather", "Time to gather a relay candidate"

    # "198.51.100.0/24", "2001:db8:1::/48", or "region:<name>" for a client that declared one.
    network = models.CharField(max_length=64)
    # What was measured: the connected pair's round trip through the relay, or how long the
    # relay took to give a candidate (an authenticated Allocate: about two round trips).
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.PAIR)
    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="client_rtts")
    rtt_ms = models.FloatField()
    weight = models.FloatField()  # the decayed number of samples, as of updated_at
    samples = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["network", "relay", "kind"], name="one_figure_per_network_relay_kind"
            )
        ]

    def __str__(self) -> str:
        return f"{self.network} → {self.relay_id}: {self.kind} {self.rtt_ms:.1f} ms"


class GrantTraffic(models.Model):
    """The bytes one credential grant moved through one relay, as its coturn counted them (the
    client's side: received from the client, sent to it). Kept RELAY_TRAFFIC_RETENTION_DAYS,
    longer than the grants themselves, so it names the grant and user rather than pointing at
    the grant's row."""

    grant_id = models.CharField(max_length=32)
    relay = models.ForeignKey(Relay, on_delete=models.CASCADE, related_name="traffic")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="relay_traffic",
    )
    received_bytes = models.PositiveBigIntegerField(default=0)
    sent_bytes = models.PositiveBigIntegerField(default=0)
    allocations = models.PositiveIntegerField(default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-last_at"]
        verbose_name_plural = "grant traffic"
        constraints = [
            models.UniqueConstraint(
                fields=["grant_id", "relay"], name="one_traffic_per_grant_relay"
            )
        ]
        indexes = [models.Index(fields=["relay", "-last_at"]), models.Index(fields=["user"])]

    def __str__(self) -> str:
        return f"{self.grant_id} on {self.relay_id}"

    @property
    def total_bytes(self) -> int:
        return self.received_bytes + self.sent_bytes


class NetworkTestResult(models.Model):
    """One run of the network test (/network-test/): what the user's browser found, and the
    verdict (relays.nettest). Kept NETWORK_TEST_RETENTION_DAYS; deleted with the user."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="network_tests"
    )
    # The browser's /24 or /48 (relays.scoring.network_key), as the server saw it.
    network = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    network_type = models.CharField(
        max_length=32, choices=[(t.value, t.value) for t in NetworkType]
    )
    verdict = models.CharField(max_length=16, choices=[(v.value, v.value) for v in Verdict])
    udp = models.BooleanField(help_text="Whether any UDP got out (STUN, or a relay over UDP).")
    # The facts the browser sent: mappings, relays per transport with their times, loopback.
    details = models.JSONField(default=dict)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="nettest_user_recent")]

    def __str__(self) -> str:
        return f"{self.network or '?'}: {self.network_type} → {self.verdict}"

    @property
    def sentence(self) -> str:
        """The verdict in one plain sentence (relays.nettest.SENTENCES)."""
        return SENTENCES[Verdict(self.verdict)]
