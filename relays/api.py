"""REST endpoints of the relays app."""

import contextlib
import ipaddress

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from calls.selectors import path_stats, relays_of_call
from calls.services import NotInCall, call_ice_issue
from config.api_errors import RateLimited, RejectUnknownFields, StrictCharField
from config.client_ip import request_client_ip
from integrations.auth import KeyScopes, key_principal
from integrations.models import Scope
from integrations.selectors import end_user

from .models import MIN_SECRET_LENGTH, Relay
from .nettest import Facts, Mapping, RelayCheck
from .scoring import network_key
from .selectors import explain_selection, relay_load
from .serializers import (
    IceServersSerializer,
    NetworkTestResultSerializer,
    NetworkTestSerializer,
    RelayFailureSerializer,
    RelayGatherSerializer,
)
from .services import (
    IceLimited,
    MeasureLimited,
    ReportLimited,
    ice_issue_check,
    ice_servers_issue,
    relay_create,
    relay_drain,
    relay_failure_report,
    relay_gather_report,
    relay_remove,
    relay_sweep,
    relay_update,
)
from .services.nettest import NetworkTestLimited, network_test_record
from .services.registry import KEEP
from .tasks import reprobe_relay


class IceRateLimited(RateLimited):
    default_code = "ice_limited"


class IceServersApi(APIView):
    """ICE servers for the signed-in caller: the best relays up right now, with fresh TURN
    credentials, in the shape `new RTCPeerConnection({iceServers})` takes. An integrator's
    user's page sends its device token; an integrator's server, its key and `?user=`."""

    key_scopes = {"GET": Scope.ICE_ISSUE}

    @staticmethod
    def _for_whom(request: Request):
        principal = key_principal(request)
        if principal is None:
            return request.user
        user = end_user(
            integrator=principal.integrator, external_id=request.query_params.get("user", "")
        )
        if user is None:
            raise NotFound("Give ?user= one of your users' externalIds.")
        return user

    @extend_schema(
        responses=IceServersSerializer,
        parameters=[
            OpenApiParameter(
                "region",
                str,
                description="The caller's region, when the client knows it (e.g. eu-west). "
                "Otherwise the admin's table of address ranges decides, else the default.",
            ),
            OpenApiParameter(
                "user",
                str,
                description="With an API key (scope ice:issue): the externalId of the user "
                "these credentials are for.",
            ),
            OpenApiParameter(
                "call",
                str,
                description="The call these relays are for: chosen with its other side in mind "
                "(the relay they hold, else one near it) and recorded on your participation. "
                "404 for a call you are not in.",
            ),
            OpenApiParameter(
                "keep",
                str,
                description="The grant from an earlier answer: refresh it (same relays while "
                "they are healthy) instead of adding one.",
            ),
        ],
    )
    def get(self, request: Request) -> Response:
        user = self._for_whom(request)
        try:
            ice_issue_check(user=user)
        except IceLimited as exc:
            raise IceRateLimited(str(exc), retry_after=exc.retry_after) from exc
        asked = {
            "user": user,
            "region": request.query_params.get("region", "")[:64],
            # An integrator's server asks from its own address, not the caller's: its region
            # comes from ?region= (or the default), not from where the server is.
            "ip": None if key_principal(request) else request_client_ip(request),
            "keep": request.query_params.get("keep", "")[:32],
        }
        call = request.query_params.get("call", "")
        if call:
            try:
                payload = call_ice_issue(call_id=call[:64], **asked)
            except NotInCall as exc:
                raise NotFound(str(exc)) from exc
        else:
            payload = ice_servers_issue(**asked)
        return Response(payload, headers={"Cache-Control": "no-store"})


class RelayExplainApi(APIView):
    """Staff only: how every relay scores for a sample caller (an IP address and/or a declared
    region), and which relays that caller would get."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        parameters=[
            OpenApiParameter("ip", str, description="The sample caller's address."),
            OpenApiParameter("region", str, description="A region the client declares."),
            OpenApiParameter(
                "call", str, description="A call the sample caller joins (its relays count)."
            ),
        ],
        responses={200: dict},
    )
    def get(self, request: Request) -> Response:
        ip = request.query_params.get("ip", "").strip() or None
        if ip is not None:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValidationError({"ip": ["Not an IP address."]}) from None
        try:
            peers = relays_of_call(request.query_params.get("call", "").strip()[:64])
        except ValueError as exc:
            raise ValidationError({"call": [str(exc)]}) from None
        return Response(
            explain_selection(
                region=request.query_params.get("region", "")[:64], ip=ip, peers=peers
            ),
            headers={"Cache-Control": "no-store"},
        )


class ReportRateLimited(RateLimited):
    default_code = "report_limited"


class RelayFailureApi(APIView):
    """A device could not use a relay it was given: the relay is probed again at once (the
    probe, not the report, decides its health)."""

    @extend_schema(request=RelayFailureSerializer, responses={202: dict})
    def post(self, request: Request) -> Response:
        ser = RelayFailureSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            relay = relay_failure_report(
                user=request.user,
                relay_url=ser.validated_data["relayUrl"],
                problem=ser.validated_data["problem"],
            )
        except ReportLimited as exc:
            raise ReportRateLimited(str(exc), retry_after=exc.retry_after) from exc
        if relay is not None:
            reprobe_relay.delay(str(relay.pk))
        return Response({"reprobing": relay is not None}, status=202)


class GatherRateLimited(RateLimited):
    default_code = "measure_limited"


class RelayGatherApi(APIView):
    """How long each relay a device was given took to give it a relay candidate: each figure
    feeds that relay's score for callers on the device's network. Only relays handed to the
    signed-in user count."""

    @extend_schema(request=RelayGatherSerializer, responses={202: dict})
    def post(self, request: Request) -> Response:
        ser = RelayGatherSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        network = network_key(
            ip=request_client_ip(request), region=ser.validated_data.get("network", "")
        )
        try:
            taken = relay_gather_report(
                user=request.user,
                network=network,
                gathered=[(g["relayUrl"], g["ms"]) for g in ser.validated_data["gathered"]],
            )
        except MeasureLimited as exc:
            raise GatherRateLimited(str(exc), retry_after=exc.retry_after) from exc
        return Response({"taken": taken}, status=202)


class StaffOrRelayKey(KeyScopes):
    """Relay management: staff signed in, or an API key with relays:admin."""

    def has_permission(self, request, view) -> bool:
        if key_principal(request) is not None:
            return super().has_permission(request, view)
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class RelaySerializer(RejectUnknownFields, serializers.ModelSerializer):
    """A relay; `secret` is write-only (never in any answer)."""

    secret = serializers.CharField(
        write_only=True, min_length=MIN_SECRET_LENGTH, max_length=256, trim_whitespace=False
    )
    urls = serializers.ListField(child=StrictCharField(max_length=300), min_length=1, max_length=8)
    allow_private = serializers.BooleanField(default=False)
    private_reason = StrictCharField(
        write_only=True, required=False, allow_blank=True, max_length=200
    )
    health = serializers.SerializerMethodField()
    load = serializers.SerializerMethodField()

    class Meta:
        model = Relay
        fields = (
            "id",
            "name",
            "urls",
            "secret",
            "region",
            "realm",
            "failure_domain",
            "capacity",
            "weight",
            "enabled",
            "draining",
            "allow_private",
            "private_reason",
            "health",
            "load",
        )
        read_only_fields = ("id", "enabled", "draining")

    @extend_schema_field(serializers.DictField())
    def get_health(self, relay: Relay) -> dict:
        return {
            "status": relay.display_status(),
            "safety": relay.display_safety(),
            "transports": relay.transport_status,
            "rttMs": relay.last_rtt_ms,
            "loss": relay.last_loss,
            "checkedAt": relay.last_checked_at.isoformat() if relay.last_checked_at else None,
            "error": relay.last_error,
        }

    @extend_schema_field(serializers.DictField())
    def get_load(self, relay: Relay) -> dict:
        allocations, source = relay_load(relay=relay)
        return {"allocations": allocations, "source": source}


def _relay_or_404(name: str) -> Relay:
    relay = Relay.objects.filter(name=name).first()
    if relay is None:
        raise NotFound("No relay by that name.")
    return relay


def _validation(exc: DjangoValidationError):
    return ValidationError(
        exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
    )


class RelaysApi(APIView):
    """The relay fleet: list it, or register a relay (its secret is write-only)."""

    permission_classes = [StaffOrRelayKey]
    key_scopes = {"GET": Scope.RELAYS_ADMIN, "POST": Scope.RELAYS_ADMIN}

    @extend_schema(responses=RelaySerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(RelaySerializer(Relay.objects.order_by("name"), many=True).data)

    @extend_schema(request=RelaySerializer, responses={201: RelaySerializer})
    def post(self, request: Request) -> Response:
        ser = RelaySerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = dict(ser.validated_data)
        try:
            relay = relay_create(actor=_actor(request), **data)
        except DjangoValidationError as exc:
            raise _validation(exc) from None
        return Response(RelaySerializer(relay).data, status=201)


def _actor(request: Request):
    return None if key_principal(request) else request.user


class RelayApi(APIView):
    """One relay: read it, change it (any field; a new secret takes effect at once), or remove
    it."""

    permission_classes = [StaffOrRelayKey]
    key_scopes = {
        "GET": Scope.RELAYS_ADMIN,
        "PATCH": Scope.RELAYS_ADMIN,
        "DELETE": Scope.RELAYS_ADMIN,
    }

    @extend_schema(responses=RelaySerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(RelaySerializer(_relay_or_404(name)).data)

    @extend_schema(request=RelaySerializer, responses=RelaySerializer)
    def patch(self, request: Request, name: str) -> Response:
        relay = _relay_or_404(name)
        ser = RelaySerializer(relay, data=request.data, partial=True)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        try:
            relay = relay_update(
                relay=relay,
                urls=d.get("urls", relay.urls),
                secret=d.get("secret", relay.secret),
                region=d.get("region", relay.region),
                realm=d.get("realm", relay.realm),
                name=d.get("name"),
                failure_domain=d.get("failure_domain"),
                capacity=d["capacity"] if "capacity" in d else KEEP,
                weight=d.get("weight"),
                allow_private=d.get("allow_private"),
                private_reason=d.get("private_reason", ""),
                actor=_actor(request),
            )
        except DjangoValidationError as exc:
            raise _validation(exc) from None
        return Response(RelaySerializer(relay).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str) -> Response:
        _relay_or_404(name)
        relay_remove(name=name)
        return Response(status=204)


class RelayProbeApi(APIView):
    """Probe a relay now (Binding, Allocate per URL, and the deep checks when due) and answer
    with its health afterwards."""

    permission_classes = [StaffOrRelayKey]
    key_scopes = {"POST": Scope.RELAYS_ADMIN}

    @extend_schema(request=None, responses=RelaySerializer)
    def post(self, request: Request, name: str) -> Response:
        relay = _relay_or_404(name)
        relay_sweep(relay_ids=[relay.pk], force=True)
        relay.refresh_from_db()
        return Response(RelaySerializer(relay).data)


class RelayDrainApi(APIView):
    """Drain a relay: no new callers; credentials already handed out run out on their own."""

    permission_classes = [StaffOrRelayKey]
    key_scopes = {"POST": Scope.RELAYS_ADMIN}

    @extend_schema(request=None, responses=RelaySerializer)
    def post(self, request: Request, name: str) -> Response:
        relay = relay_drain(relay=_relay_or_404(name), actor=_actor(request))
        return Response(RelaySerializer(relay).data)


class NetworkTestRateLimited(RateLimited):
    default_code = "network_test_limited"


class NetworkTestsApi(APIView):
    """The network test's results: the page (/network-test/) posts what the browser found and
    gets the verdict; GET lists the signed-in user's own recent runs."""

    @extend_schema(responses=NetworkTestResultSerializer(many=True))
    def get(self, request: Request) -> Response:
        rows = request.user.network_tests.all()[:20]
        return Response(NetworkTestResultSerializer(rows, many=True).data)

    @extend_schema(request=NetworkTestSerializer, responses={201: NetworkTestResultSerializer})
    def post(self, request: Request) -> Response:
        ser = NetworkTestSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        data = ser.validated_data
        facts = Facts(
            mappings=[
                Mapping(m["server"], str(m["address"]), m["port"], m.get("base", ""))
                for m in data["mappings"]
            ],
            host_addresses=list(data["hostAddresses"]),
            stun_servers=data["stunServers"],
            relays=[RelayCheck(r["url"], r["ok"], r.get("ms")) for r in data["relays"]],
            client_ip=request_client_ip(request) or "",
        )
        try:
            result = network_test_record(
                user=request.user,
                network=network_key(ip=facts.client_ip or None),
                facts=facts,
                details=request.data if isinstance(request.data, dict) else {},
            )
        except NetworkTestLimited as exc:
            raise NetworkTestRateLimited(str(exc), retry_after=exc.retry_after) from exc
        # How long each relay took to allocate is what a call's page reports too: it feeds
        # that relay's figure for this network (only relays handed to this user count).
        timed = [(r.url.url, r.ms) for r in facts.relays if r.ok and r.ms is not None]
        if timed and result.network:
            with contextlib.suppress(MeasureLimited):
                relay_gather_report(user=request.user, network=result.network, gathered=timed)
        return Response(NetworkTestResultSerializer(result).data, status=201)


class FleetPathsApi(APIView):
    """The fleet's truth (staff, or a key with relays:admin): calls that went direct, relayed or
    failed per day; the direct share per NAT type the callers' network tests found; the relays
    that carried calls, with minutes; the failed calls, with the path each side tried."""

    permission_classes = [StaffOrRelayKey]
    key_scopes = {"GET": Scope.RELAYS_ADMIN}

    @extend_schema(
        parameters=[
            OpenApiParameter("days", int, description="How many days back (1-90; default 14).")
        ],
        responses=dict,
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("days", "")
        try:
            days = int(raw) if raw else settings.FLEET_PATH_DAYS
        except ValueError:
            raise ValidationError({"days": ["A whole number of days, 1-90."]}) from None
        if not 1 <= days <= 90:
            raise ValidationError({"days": ["A whole number of days, 1-90."]})
        return Response(path_stats(days=days))
