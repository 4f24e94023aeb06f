"""One error shape for the whole API, and JSON parsing that can't be made to fail with a 500.

Every error the API returns looks like
    {"error": {"code": "<machine code>", "message": "<for a person>", "fields": {...}}}
with `fields` (field name -> list of messages) only for validation errors. The codes come from
one list, config.error_codes, which the signaling socket's `error` frames share.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import JSONParser

CODES = {
    exceptions.ParseError: "bad_json",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


class ServiceUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is briefly unavailable; try again in a moment."
    default_code = "unavailable"


class Conflict(exceptions.APIException):
    """The request is well-formed but the resource's state refuses it (e.g. `call_full`)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "That can't be done in the current state."
    default_code = "conflict"


class RateLimited(exceptions.APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many requests; slow down."
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    body: dict = {"code": code, "message": message}
    if fields is not None:
        body["fields"] = fields
    return {"error": body}


def _fields(detail) -> dict:
    if isinstance(detail, dict):
        return {
            key: [str(m) for m in (value if isinstance(value, list) else [value])]
            for key, value in detail.items()
        }
    messages = detail if isinstance(detail, list) else [detail]
    return {"non_field_errors": [str(m) for m in messages]}


def api_exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    # (imported here: rest_framework.views reads the API settings, which name this module)
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("invalid", "The request is not valid.", _fields(exc.detail))
    else:
        code = (
            CODES.get(type(exc))
            or getattr(exc.detail, "code", None)  # raised with its own code (e.g. call_full)
            or getattr(exc, "default_code", None)
            or "error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response.data = error_body(str(code), str(detail))
    if isinstance(exc, RateLimited):
        response["Retry-After"] = str(exc.retry_after)
    return response


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, but a body nested thousands deep is a 400, not a RecursionError (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("JSON parse error - nested too deeply.") from None


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF's CharField turns 42 or true into "42" and "True"; an
    API that names wrong types refuses them."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictRegexField(serializers.RegexField):
    """A string matching `regex` in full (RegexField searches; this anchors it)."""

    default_error_messages = {"not_a_string": "Must be a string."}

    def __init__(self, regex: str, **kwargs):
        super().__init__(rf"\A(?:{regex})\Z", **kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: under /api/, the API's error shape (403 forbidden); elsewhere,
    Django's own page."""
    if request.path.startswith("/api/"):
        from django.http import JsonResponse

        return JsonResponse(
            error_body(
                "forbidden", f"CSRF check failed: {reason}" if reason else "CSRF check failed."
            ),
            status=403,
        )
    from django.views.csrf import csrf_failure as django_csrf_failure

    return django_csrf_failure(request, reason=reason)


class RejectUnknownFields:
    """A serializer mixin: a key the serializer doesn't know is a 400 naming it (DRF drops
    unknown keys silently, so a typo'd `displayname` would pass as a request without it)."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(k for k in data if k not in self.fields)  # type: ignore[attr-defined]
            if unknown:
                raise serializers.ValidationError({k: ["Unknown field."] for k in unknown})
        return super().to_internal_value(data)  # type: ignore[misc]
