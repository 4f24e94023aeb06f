"""The embeddable call page: `/embed/call/<id>?ticket=…` in an integrator's iframe.

The page is the call page, without the site's navigation, for an integrator's end user who has
no session here: its socket redeems the ticket (integrations.tickets) and reconnects with the
device token the welcome gives, and its ICE refreshes send that token. Only the integrator's
allowed origins may frame it (Content-Security-Policy frame-ancestors, set per response);
X-Frame-Options, which can't list origins, is left off for this view only.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.clickjacking import xframe_options_exempt

from calls.selectors import participant_for
from calls.views import call_page_context

from .models import Integrator
from .tickets import TicketError, ticket_peek


@xframe_options_exempt
def embed_call(request: HttpRequest, call_id) -> HttpResponse:
    ticket = request.GET.get("ticket", "")
    try:
        user, ticket_call = ticket_peek(ticket)
    except TicketError as exc:
        return render(request, "embed/refused.html", {"message": str(exc)}, status=401)
    me = participant_for(call_id=call_id, user=user)
    if me is None or (ticket_call and ticket_call != str(call_id)):
        return render(
            request,
            "embed/refused.html",
            {"message": "This ticket is not for this call."},
            status=404,
        )
    response = render(
        request,
        "calls/call.html",
        call_page_context(request, me, base_template="embed/base.html", ticket=ticket),
    )
    origins = Integrator.objects.filter(pk=user.integrator_id).values_list(
        "allowed_origins", flat=True
    )
    allowed = [o for found in origins for o in (found or [])]
    response._csp_replace = {"frame-ancestors": ["'self'", *allowed]}  # type: ignore[attr-defined]
    return response
