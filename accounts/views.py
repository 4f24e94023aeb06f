"""Sign up, and the rate limits around Django's own sign-in and password-reset views."""

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView, PasswordResetView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from django_ratelimit.decorators import ratelimit

from config.api_errors import error_body

from .forms import SignUpForm
from .models import User
from .services import block_create, block_delete, user_set_do_not_disturb
from .usernames import username_key


def _username_tried(group: str, request: HttpRequest) -> str:
    """The account a sign-in tries, as Django will authenticate it (stripped, NFKC) and folded:
    `bob `, `ＢＯＢ` and `bob` share one counter."""
    return "u:" + username_key(request.POST.get("username", ""))


@ratelimit(key="ip", rate="10/h", method="POST", block=True)
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("calls:home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("calls:home")
    return render(
        request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200
    )


# Password guessing: per address and per account name.
login_view = ratelimit(key="ip", rate="20/m", method="POST", block=True)(
    ratelimit(key=_username_tried, rate="10/m", method="POST", block=True)(
        LoginView.as_view(template_name="accounts/login.html", redirect_authenticated_user=True)
    )
)


# Anyone can ask for a reset email: per address and per email, so nobody's inbox is flooded.
password_reset = ratelimit(key="ip", rate="10/h", method="POST", block=True)(
    ratelimit(key="post:email", rate="3/h", method="POST", block=True)(
        PasswordResetView.as_view(
            template_name="accounts/password_reset.html",
            email_template_name="accounts/password_reset_email.txt",
            subject_template_name="accounts/password_reset_subject.txt",
            success_url=reverse_lazy("accounts:password_reset_done"),
        )
    )
)


def rate_limited(request: HttpRequest, exception: Exception) -> HttpResponse:
    message = "Too many attempts. Wait a minute and try again."
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("rate_limited", message), status=429)
    return render(request, "accounts/rate_limited.html", {"message": message}, status=429)


@login_required
@require_http_methods(["GET", "POST"])
def settings_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST" and request.POST.get("action") == "dnd":
        user_set_do_not_disturb(user=request.user, on=bool(request.POST.get("do_not_disturb")))
        messages.success(
            request,
            "Do not disturb is on." if request.user.do_not_disturb else "Do not disturb is off.",
        )
        return redirect("accounts:settings")
    return _settings_page(request)


def _settings_page(request: HttpRequest, *, block_error: str = "", status: int = 200):
    return render(
        request,
        "accounts/settings.html",
        {"blocks": request.user.blocks.select_related("blocked"), "block_error": block_error},
        status=status,
    )


def _next_or_settings(request: HttpRequest):
    nxt = request.POST.get("next", "")
    if nxt and url_has_allowed_host_and_scheme(nxt, allowed_hosts={request.get_host()}):
        return redirect(nxt)
    return redirect("accounts:settings")


@login_required
@require_POST
def block(request: HttpRequest) -> HttpResponse:
    username = request.POST.get("username", "").strip()
    other = User.objects.filter(
        username__iexact=username, integrator_id=request.user.integrator_id
    ).first()
    if other is None or other.pk == request.user.pk:
        error = "You can't block yourself." if other else f"There is no one called {username!r}."
        return _settings_page(request, block_error=error, status=400)
    block_create(blocker=request.user, blocked=other)
    messages.success(request, f"@{other.username} is blocked: they can't ring you.")
    return _next_or_settings(request)


@login_required
@require_POST
def unblock(request: HttpRequest, user_id: int) -> HttpResponse:
    if block_delete(blocker=request.user, blocked_id=user_id):
        messages.success(request, "Unblocked.")
    return _next_or_settings(request)
