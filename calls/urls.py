from django.urls import path

from . import views

app_name = "calls"
urlpatterns = [
    path("", views.home, name="home"),
    path("calls/", views.history, name="history"),
    path("calls/<uuid:call_id>/", views.call_page, name="call"),
    path("calls/<uuid:call_id>/details/", views.call_detail, name="detail"),
]
