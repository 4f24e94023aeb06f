"""One ASGI app for HTTP (Django, DRF) and WebSocket signaling (Channels)."""

import gc
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.http import get_http_application  # noqa: E402

django_asgi_app = get_http_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from signaling.auth import SocketAuthMiddleware  # noqa: E402
from signaling.origins import SameOriginValidator  # noqa: E402
from signaling.routing import websocket_urlpatterns  # noqa: E402

if "daphne.server" in sys.modules:  # served by Daphne: tell sockets to move before it stops
    from signaling.hub import install_daphne_drain  # noqa: E402
    from signaling.under_daphne import (  # noqa: E402
        drop_handshake_leftovers,
        eager_tcp_writes,
        fast_websocket_frames,
        quiet_autobahn_debug_arguments,
        slim_input_queues,
        thin_daphne_sweeps,
    )

    install_daphne_drain()
    quiet_autobahn_debug_arguments()
    thin_daphne_sweeps()
    eager_tcp_writes()
    slim_input_queues()
    drop_handshake_leftovers()
    fast_websocket_frames()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(SocketAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)

# Everything loaded at start-up lives as long as the process: keep it out of the cyclic garbage
# collector's way (it walked those objects again and again on the hot path, issue 8), and
# collect the young generation less often (a relayed frame allocates some dozens of objects).
gc.freeze()
gc.set_threshold(10_000, 20, 20)
