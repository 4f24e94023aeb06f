"""Outages of what the web process depends on become a 503 with an explanation, never a 500.

When Redis (the cache behind rate limits, the channel layer that rings callees) or the database
can't be reached, a request fails with a 503: JSON in the API's error shape for /api/, a short
page otherwise, with Retry-After. Nothing half-done is left: services either finish in one
transaction or undo what they did (see calls.services.call_start).
"""

from __future__ import annotations

import logging

import redis.exceptions
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

from .api_errors import error_body

logger = logging.getLogger(__name__)

OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
    InterfaceError,
)
RETRY_AFTER_SECONDS = 5


def unreachable(exc: BaseException) -> str:
    """What an outage error (one of OUTAGES) could not reach."""
    return "database" if isinstance(exc, DatabaseError) else "Redis server"


def outage_message(what: str) -> str:
    return f"Traverse can't reach its {what} right now. Try again in a few seconds."


def outage_response(request: HttpRequest, what: str) -> HttpResponse:
    message = outage_message(what)
    if request.path.startswith("/api/"):
        response: HttpResponse = JsonResponse(error_body("unavailable", message), status=503)
    else:
        html = render_to_string("unavailable.html", {"message": message})
        response = HttpResponse(html, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class OutageMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OUTAGES):
            return None
        what = unreachable(exception)
        logger.error(
            "503 for %s %s: %s unreachable (%s)", request.method, request.path, what, exception
        )
        return outage_response(request, what)


class NulCharacterMiddleware:
    """A NUL character in the path or the query string is a 400, before any view: PostgreSQL
    text can't hold one, so a lookup with it raised a 500 wherever a view passed a query
    parameter or a path segment to the database (found by schemathesis: ?user=%00…). Request
    bodies are checked by the serializers (DRF's CharField refuses NUL)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in v for v in values) for key, values in request.GET.lists()
        ):
            message = "The address contains a NUL character."
            if request.path.startswith("/api/"):
                return JsonResponse(error_body("bad_request", message), status=400)
            return HttpResponse(message, status=400, content_type="text/plain")
        return self.get_response(request)
