"""Web UI for callers: home (start a call), the call screen, history and a call's details."""

from datetime import timedelta

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from .forms import StartCallForm
from .models import CallKind, CallState
from .ratelimits import call_start_retry_after
from .selectors import call_history_for, call_quality_for, participant_for
from .services import CallError, CallUnavailable, call_start, calls_mark_missed_seen

# An ended call's screen still shows for this long (busy, declined), then its details do.
ENDED_SCREEN = timedelta(seconds=60)


@login_required
@require_http_methods(["GET", "POST"])
def home(request: HttpRequest) -> HttpResponse:
    form = StartCallForm(request.POST or None, caller=request.user)
    status = 200
    if request.method == "POST" and form.is_valid():
        callee = form.cleaned_data["callee"]
        retry_after = call_start_retry_after(request, callee=callee)
        if retry_after is not None:
            form.add_error(None, f"Too many calls; try again in {retry_after} s.")
            status = 429
        else:
            kind = request.POST.get("kind")
            try:
                call = call_start(
                    caller=request.user,
                    callee=callee,
                    kind=kind if kind in CallKind.values else CallKind.VIDEO,
                )
            except CallUnavailable as exc:
                form.add_error(None, exc.message)
                status = 503
            except CallError as exc:
                form.add_error("callee", exc.message)
            else:
                url = reverse("calls:call", args=[call.id])
                if call.created_by_id != request.user.pk:
                    # Glare: they are calling us right now; answer their call.
                    video = "1" if kind != CallKind.VOICE else "0"
                    url += f"?answer=1&video={video}"
                return redirect(url)
    context = {"form": form, "recent": call_history_for(user=request.user)[:5]}
    if form.errors and status == 200:
        status = 400
    response = render(request, "calls/home.html", context, status=status)
    if status == 429:
        response["Retry-After"] = str(retry_after)
    return response


@login_required
def call_page(request: HttpRequest, call_id) -> HttpResponse:
    me = participant_for(call_id=call_id, user=request.user)
    if me is None:
        raise Http404("No such call.")  # 404, not 403: call ids are not probeable
    call = me.call
    if call.state == CallState.ENDED and (
        call.ended_at is None or timezone.now() - call.ended_at > ENDED_SCREEN
    ):
        return redirect("calls:detail", call_id=call_id)
    context = call_page_context(request, me)
    if request.GET.get("fragment") == "1":
        # The call screen alone, for a page where it rings: that page shows it when answered
        # (static/js/ringer.js), with no page load between the click and the media.
        context["base_template"] = "calls/fragment.html"
    return render(request, "calls/call.html", context)


def call_page_context(request: HttpRequest, me, **extra) -> dict:
    """What the call page renders for participant `me` (the site's page, and the embed page)."""
    call = me.call
    return {
        "call": call,
        "me": me,
        "peer": call.participants.exclude(pk=me.pk).select_related("user").first(),
        "answer": request.GET.get("answer") == "1",
        "video": request.GET.get("video") != "0",
        "force_relay": request.GET.get("policy") == "relay",
        **extra,
    }


@login_required
def history(request: HttpRequest) -> HttpResponse:
    calls = list(call_history_for(user=request.user)[:100])
    response = render(request, "calls/history.html", {"calls": calls})
    calls_mark_missed_seen(user=request.user)  # after rendering: this page still shows them new
    return response


@login_required
def call_detail(request: HttpRequest, call_id) -> HttpResponse:
    me = participant_for(call_id=call_id, user=request.user)
    if me is None:
        raise Http404("No such call.")
    call = call_history_for(user=request.user).get(pk=call_id)
    peer = next((p for p in call.participants.all() if p.user_id != request.user.pk), None)
    return render(
        request,
        "calls/detail.html",
        {
            "call": call,
            "me": me,
            "peer": peer,
            "events": call.events.select_related("user"),
            "chat": call.chat.select_related("user"),
            "quality": call_quality_for(call=call),
            "blocked": peer is not None
            and request.user.blocks.filter(blocked_id=peer.user_id).exists(),
        },
    )
