from django.urls import path

from .consumers import SignalConsumer

websocket_urlpatterns = [path("ws/signal/", SignalConsumer.as_asgi())]
