from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from signaling.views import health

urlpatterns = [
    path("healthz", health, name="health"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/v1/", include("config.api")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("", include("calls.urls")),
]
