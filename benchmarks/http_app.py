"""The platform's URLs with four trivial JSON views beside them, for benchmarks/assignment.py:
a URLconf (`benchmarks.http_app`) for the in-process client, and an ASGI application
(`benchmarks.http_app:application`) that Daphne serves exactly as it serves
`config.asgi:application`. Both are built on first use, once Django is set up."""

from __future__ import annotations

from django.http import JsonResponse


def trivial_view(request):
    return JsonResponse({"ok": True})


def trivial_signed_in_view(request):
    """The same, for the signed-in caller: the session and user reads every API call pays."""
    return JsonResponse({"user": request.user.pk})


def trivial_one_statement_view(request):
    """The trivial view plus one database round trip (`SELECT 1`): the least any view pays
    that reads or writes the database (ice-servers writes its grant)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"ok": one == 1})


def floor_view(request):
    """The least any endpoint that issues credentials must do, and nothing else: read the
    signed-in caller (session + user), count them against a per-user rate limit (one Redis
    round trip), and one database statement (`SELECT 1`, cheaper than the grant's INSERT)."""
    from django.db import connection

    from config.ratelimits import per_user_retry_after

    user = request.user
    limited = per_user_retry_after(user=user, group="bench.floor", rate="1000000/m")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        (one,) = cursor.fetchone()
    return JsonResponse({"user": user.pk, "ok": one == 1 and limited is None})


def __getattr__(name: str):
    if name == "urlpatterns":
        from django.urls import include, path

        return [
            path("bench/trivial/", trivial_view),
            path("bench/trivial-signed-in/", trivial_signed_in_view),
            path("bench/trivial-one-statement/", trivial_one_statement_view),
            path("bench/floor/", floor_view),
            path("", include("config.urls")),
        ]
    if name == "application":
        from django.conf import settings

        from config.asgi import application  # sets Django up

        settings.ROOT_URLCONF = __name__
        return application
    raise AttributeError(name)
