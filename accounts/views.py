"""Sign up, and the rate limits around Django's own sign-in and password-reset views."""

from django.contrib.auth import login
from django.contrib.auth.views import LoginView, PasswordResetView
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.http import require_http_methods
from django_ratelimit.decorators import ratelimit

from config.api_errors import error_body

from .forms import SignUpForm
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
