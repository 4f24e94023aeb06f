"""Pages of the relays app: the network test."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from .services.nettest import network_test_stun_urls


@login_required
def network_test(request: HttpRequest) -> HttpResponse:
    """Checks, from the user's browser, what calls from this network can do (static/js/nettest.js
    runs it; the server decides the verdict)."""
    return render(
        request,
        "relays/network_test.html",
        {
            "plan": {
                "stunUrls": network_test_stun_urls(),
                "iceUrl": reverse("api-ice-servers"),
                "postUrl": reverse("api-network-tests"),
            },
            "recent": request.user.network_tests.all()[:5],
        },
    )
