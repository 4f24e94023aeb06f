"""Web UI for callers: home (start a call, incoming calls), the in-call page, history."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from .forms import StartCallForm
from .models import CallState
from .ratelimits import call_start_retry_after
from .selectors import call_history_for, calls_ringing_for, participant_for
from .services import CallError, CallUnavailable, call_start


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
            try:
                call = call_start(caller=request.user, callee=callee)
            except CallUnavailable as exc:
                form.add_error(None, exc.message)
                status = 503
            except CallError as exc:
                form.add_error("callee", exc.message)
            else:
                return redirect("calls:call", call_id=call.id)
    context = {
        "form": form,
        "ringing": calls_ringing_for(user=request.user)[:10],
        "recent": call_history_for(user=request.user)[:5],
    }
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
    if me.call.state == CallState.ENDED:
        return redirect("calls:detail", call_id=call_id)
    peer = me.call.participants.exclude(pk=me.pk).select_related("user").first()
    return render(
        request,
        "calls/call.html",
        {
            "call": me.call,
            "me": me,
            "peer": peer,
            "force_relay": request.GET.get("policy") == "relay",
        },
    )


@login_required
def history(request: HttpRequest) -> HttpResponse:
    return render(
        request, "calls/history.html", {"calls": call_history_for(user=request.user)[:100]}
    )


@login_required
def call_detail(request: HttpRequest, call_id) -> HttpResponse:
    me = participant_for(call_id=call_id, user=request.user)
    if me is None:
        raise Http404("No such call.")
    call = call_history_for(user=request.user).get(pk=call_id)
    return render(request, "calls/detail.html", {"call": call})
