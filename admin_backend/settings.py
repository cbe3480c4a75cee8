"""Django settings for admin_backend, read from the environment (see .env.example)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import quote

import environ

from admin_backend import queues
from taskcore.logging import PROCESS_ROLES, build_logging_config
from taskcore.queues import QueueTable

BASE_DIR = Path(__file__).resolve().parent.parent
# The project directory holds var/ (SQLite database, static, media), logs/ and .env;
# relative paths in the settings start there. A checkout: beside manage.py. An
# installed copy (pip install ., where BASE_DIR is site-packages): ADMIN_BACKEND_HOME,
# else the working directory.
PROJECT_DIR = Path(
    os.environ.get("ADMIN_BACKEND_HOME")
    or (BASE_DIR if (BASE_DIR / "manage.py").is_file() else Path.cwd())
).resolve()
VAR_DIR = PROJECT_DIR / "var"

env = environ.Env()
# The test runs set DJANGO_READ_DOT_ENV=0: a developer's .env must not change them.
if os.environ.get("DJANGO_READ_DOT_ENV", "1") != "0":
    environ.Env.read_env(PROJECT_DIR / ".env", overwrite=False)


def env_or(name: str, default: str) -> str:
    """The variable's value, or ``default`` when it is unset or empty (``FOO=`` in .env)."""
    return os.environ.get(name) or default


# --- Django core -------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env_or("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "SECRET_KEY is not set and DEBUG is off: set SECRET_KEY in the environment or .env "
            "(start_celery.sh writes a .env with a generated key on its first run)"
        )
    SECRET_KEY = "django-insecure-development-only"  # noqa: S105 - DEBUG only
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "taskcore",
    "notifications",
    "media",
    "reports",
    "maintenance",
    "dashboard",
]

MIDDLEWARE = [
    # Serves /health/live, /health/ready and /metrics before host checks and HTTPS redirects.
    "taskcore.health.middleware.HealthProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "admin_backend.urls"
WSGI_APPLICATION = "admin_backend.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------
VAR_DIR.mkdir(parents=True, exist_ok=True)
DATABASES = {
    "default": env.db_url_config(env_or("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"))
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while workers write; IMMEDIATE takes the write
    # lock when a transaction begins, so waiting for it goes through the busy
    # timeout (a read transaction upgraded to a write fails at once instead).
    # SQLite has one write lock: a writer stuck inside a transaction (a frozen
    # process) holds it. Every other writer waits at most SQLITE_BUSY_TIMEOUT
    # seconds, then gets "database is locked", a transient error its task retries
    # with backoff (taskcore/base.py): it must stay well below the shortest soft
    # time limit, or the wait ends as a time-limit dead letter instead.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": env.float("SQLITE_BUSY_TIMEOUT", default=5.0),
        }
    )
    # Workers are separate processes, so the test database must be a file.
    # One file per test process, so parallel runs in one checkout do not collide.
    DATABASES["default"]["TEST"] = {
        "NAME": env_or("TEST_DATABASE_NAME", str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3"))
    }
else:
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # pg_stat_activity then says which of our programs holds each session; a
        # Celery program adds its role ("admin_backend worker"; admin_backend/celery.py).
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
            "application_name", "admin_backend"
        )
    if DATABASES["default"]["ENGINE"].endswith("mysql"):
        # MariaDB/MySQL: utf8mb4 holds all of Unicode (their "utf8" stops at three
        # bytes: an emoji in a subject would fail); strict mode makes a value too long
        # for its column an error instead of silently cut. ?charset=... in the URL wins.
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")
        DATABASES["default"]["OPTIONS"].setdefault(
            "init_command", "SET sql_mode='STRICT_TRANS_TABLES'"
        )
        DATABASES["default"]["TEST"] = {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"}
    if os.environ.get("TEST_DATABASE_NAME"):
        DATABASES["default"].setdefault("TEST", {})["NAME"] = os.environ["TEST_DATABASE_NAME"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_or("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = PROJECT_DIR / env_or("STATIC_ROOT", str(VAR_DIR / "static"))
# Until collectstatic has run (a fresh checkout, the tests) WhiteNoise would warn
# "No directory at var/static/" at every start; an empty directory serves nothing.
# Where it cannot be created, that warning is the right message.
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
MEDIA_URL = "media/"
MEDIA_ROOT = PROJECT_DIR / env_or("MEDIA_ROOT", str(VAR_DIR / "media"))
# Upload limits (media queue); renditions and storages: see media/conf.py.
MEDIA_UPLOAD_MAX_BYTES = env.int("MEDIA_UPLOAD_MAX_BYTES", default=20 * 1024 * 1024)
MEDIA_UPLOAD_MAX_PIXELS = env.int("MEDIA_UPLOAD_MAX_PIXELS", default=50_000_000)

# --- Security (production values follow DEBUG=False; see docs/operations.md) --
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Broker and cache URLs carry passwords: keep them out of Django's error pages.
DEFAULT_EXCEPTION_REPORTER_FILTER = "taskcore.reporting.SecretSettingsFilter"

# --- Reports (documented in reports/conf.py) ----------------------------------
# Empty: exports/ beside MEDIA_ROOT (private; never under MEDIA_ROOT).
REPORTS_EXPORT_ROOT = env_or("REPORTS_EXPORT_ROOT", "")
REPORTS_EXPORT_TTL_SECONDS = env.int("REPORTS_EXPORT_TTL_SECONDS", default=7 * 24 * 3600)
REPORTS_SITE_URL = env_or("REPORTS_SITE_URL", "")  # links in emails sent by the commands
REPORTS_RECORD_TASK_RUNS = env.bool("REPORTS_RECORD_TASK_RUNS", default=True)
# Task runs left out of the admin's task-run list unless its filter asks for them.
REPORTS_TASK_RUNS_HIDDEN = ["dashboard.tasks.collect_sample"]
# The demo model (Sample records) in the admin: for trying exports, not production.
REPORTS_DEMO_ADMIN = env.bool("REPORTS_DEMO_ADMIN", default=DEBUG)
# Dashboard: task outcomes and runtimes per queue counted in the workers (dashboard/stats.py).
DASHBOARD_TASK_STATS = env.bool("DASHBOARD_TASK_STATS", default=True)

# --- Email (development default: the local aiosmtpd server of start_celery.sh) -
EMAIL_BACKEND = env_or("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_or("EMAIL_HOST", "127.0.0.1")
EMAIL_PORT = env.int("EMAIL_PORT", default=1025)
EMAIL_HOST_USER = env_or("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_or("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=30)
DEFAULT_FROM_EMAIL = env_or("DEFAULT_FROM_EMAIL", "AU-VLP <no-reply@localhost>")
# Campaigns and links in mail (checked and documented in notifications/conf.py).
EMAIL_BATCH_SIZE = env_or("EMAIL_BATCH_SIZE", "100")
EMAIL_SITE_URL = env_or("EMAIL_SITE_URL", "http://127.0.0.1:8000")
EMAIL_UNSUBSCRIBE_MAILTO = env_or("EMAIL_UNSUBSCRIBE_MAILTO", "")
EMAIL_MESSAGE_ID_DOMAIN = env_or("EMAIL_MESSAGE_ID_DOMAIN", "")
# Sending to a relay (docs/email.md): one rate for the whole installation (empty:
# none), SMTP connections kept open per worker process, and how long one may idle.
EMAIL_RATE_LIMIT = env_or("EMAIL_RATE_LIMIT", "")
EMAIL_SMTP_CONNECTIONS = env_or("EMAIL_SMTP_CONNECTIONS", "8")
EMAIL_SMTP_IDLE_SECONDS = env_or("EMAIL_SMTP_IDLE_SECONDS", "20")

# --- Health checks and beat liveness (documented in taskcore/health/conf.py) ---
HEALTH_TIMEOUT = env.float("HEALTH_TIMEOUT", default=5.0)
HEALTH_BROADCAST_TIMEOUT = env.float("HEALTH_BROADCAST_TIMEOUT", default=1.5)
HEALTH_HTTP_CACHE_SECONDS = env.float("HEALTH_HTTP_CACHE_SECONDS", default=5.0)
HEALTH_METRICS_TOKEN = env_or("HEALTH_METRICS_TOKEN", "")
# /health/?detail=1 (hosts, workers, PIDs) for the people who may see the dashboard.
HEALTH_DETAIL_PERMISSION = "dashboard.view_operations_dashboard"
BEAT_HEARTBEAT_INTERVAL = env.float("BEAT_HEARTBEAT_INTERVAL", default=5.0)
BEAT_LOCK_TTL = env.float("BEAT_LOCK_TTL", default=30.0)
BEAT_HEARTBEAT_WARNING = env.float("BEAT_HEARTBEAT_WARNING", default=60.0)
BEAT_HEARTBEAT_CRITICAL = env.float("BEAT_HEARTBEAT_CRITICAL", default=300.0)
REDIS_MEMORY_WARNING_PERCENT = env.float("REDIS_MEMORY_WARNING_PERCENT", default=80.0)
REDIS_MEMORY_CRITICAL_PERCENT = env.float("REDIS_MEMORY_CRITICAL_PERCENT", default=95.0)
DEAD_LETTERS_CRITICAL_PER_HOUR = env.float("DEAD_LETTERS_CRITICAL_PER_HOUR", default=50.0)
# Every worker relays the outbox and parked dead letters from a thread, at start
# and every this many seconds, whatever its queues hold (taskcore/relay.py); 0: at start only.
CELERY_OUTBOX_RELAY_INTERVAL = env.float("CELERY_OUTBOX_RELAY_INTERVAL", default=10.0)
OUTBOX_BACKLOG_WARNING = env.float("OUTBOX_BACKLOG_WARNING", default=100.0)
OUTBOX_BACKLOG_CRITICAL = env.float("OUTBOX_BACKLOG_CRITICAL", default=1000.0)
OUTBOX_AGE_WARNING = env.float("OUTBOX_AGE_WARNING", default=60.0)
OUTBOX_AGE_CRITICAL = env.float("OUTBOX_AGE_CRITICAL", default=300.0)
# Flower's health URL for celery_health; empty (FLOWER_URL=) or "off" skips the check.
FLOWER_URL = env.str("FLOWER_URL", default="http://127.0.0.1:5555/healthcheck")

# --- Redis -------------------------------------------------------------------
REDIS_HOST = env_or("REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(env_or("REDIS_PORT", "6379"))
REDIS_PASSWORD = env_or("REDIS_PASSWORD", "")
REDIS_TLS = env.bool("REDIS_TLS", default=False)


def _redis_url(db: int) -> str:
    scheme = "rediss" if REDIS_TLS else "redis"
    auth = f":{quote(REDIS_PASSWORD, safe='')}@" if REDIS_PASSWORD else ""
    return f"{scheme}://{auth}{REDIS_HOST}:{REDIS_PORT}/{db}"


REDIS_URL = env_or("REDIS_URL", _redis_url(0))

# Connection-pool behaviour shared by the broker, the result backend and the cache.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=30.0)
REDIS_SOCKET_CONNECT_TIMEOUT = env.float("REDIS_SOCKET_CONNECT_TIMEOUT", default=5.0)
REDIS_HEALTH_CHECK_INTERVAL = env.int("REDIS_HEALTH_CHECK_INTERVAL", default=25)
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", default=50)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env(
            "CACHE_URL", default=_redis_url(1) if "REDIS_URL" not in env else REDIS_URL
        ),
        "KEY_PREFIX": env_or("CACHE_KEY_PREFIX", "admin_backend"),
        "OPTIONS": {
            "socket_keepalive": True,
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
            "socket_connect_timeout": REDIS_SOCKET_CONNECT_TIMEOUT,
            "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
            "retry_on_timeout": True,
            "max_connections": REDIS_MAX_CONNECTIONS,
        },
    }
}

# --- Queues --------------------------------------------------------------------
# The queue table (admin_backend/queues.py), handed to the platform (taskcore
# reads it through taskcore.queues.queue_table()). CELERY_TIME_LIMIT_CAP (seconds)
# caps every time limit and retry delay: for deployments without long work and
# the chaos tests, where a short visibility timeout then becomes safe.
CELERY_TIME_LIMIT_CAP = env.int("CELERY_TIME_LIMIT_CAP", default=0)
TASKCORE_QUEUE_TABLE = (
    QueueTable(
        queues.QUEUES, default_queue=queues.DEFAULT_QUEUE, time_limit_cap=CELERY_TIME_LIMIT_CAP
    )
    if CELERY_TIME_LIMIT_CAP
    else queues.TABLE
)
# The task celery_health --test-tasks sends to every queue (a round trip each).
TASKCORE_HEALTH_CHECK_TASK = "maintenance.tasks.health_check_task"

# --- Celery (read by admin_backend/celery.py with the CELERY_ namespace) ------
CELERY_BROKER_URL = env_or("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_or("CELERY_RESULT_BACKEND", CELERY_BROKER_URL)

# Broker connection retry (the spec's values).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = env.int("CELERY_BROKER_CONNECTION_MAX_RETRIES", default=10)
CELERY_BROKER_CONNECTION_RETRY_DELAY = env.float(
    "CELERY_BROKER_CONNECTION_RETRY_DELAY", default=5.0
)
CELERY_BROKER_CONNECTION_TIMEOUT = REDIS_SOCKET_CONNECT_TIMEOUT
CELERY_BROKER_POOL_LIMIT = env.int("CELERY_BROKER_POOL_LIMIT", default=10)

# A message taken by a worker that died (not just its child) comes back to the
# queue after this many seconds. It must exceed the longest hard time limit and
# the longest retry countdown, or a running/waiting task is delivered twice;
# admin_backend.celery checks that at start-up and refuses to run otherwise.
CELERY_VISIBILITY_TIMEOUT = env.int(
    "CELERY_VISIBILITY_TIMEOUT",
    default=max(
        TASKCORE_QUEUE_TABLE.longest_time_limit(), TASKCORE_QUEUE_TABLE.longest_retry_delay()
    )
    * 2,
)
# A caller (a web request, a management command) waits on the broker at most about
# this long for a publish: two attempts (one retry, after a broken pooled
# connection) of 40% of it each; then .delay() raises kombu's OperationalError and
# send_after_commit leaves the row to the relay. Workers and beat wait out a short
# outage instead (LONG_RUNNING_BROKER_OPTIONS, applied when they start).
CELERY_CALLER_TIMEOUT = env.float("CELERY_CALLER_TIMEOUT", default=1.0)
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0,
    "interval_max": 0,
}
_redis_transport_options = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_keepalive": True,
    "socket_timeout": CELERY_CALLER_TIMEOUT / 2.5,
    "socket_connect_timeout": CELERY_CALLER_TIMEOUT / 2.5,
    "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
    # Not redis-py's retry on timeout for the broker: after a Redis restart the
    # worker's event loop can wait on a pub/sub connection with nothing to read,
    # and redis-py would reconnect and wait again, over and over (measured: a
    # worker stuck for minutes in the R2 SIGKILL chaos test). A timeout must
    # reach kombu, which rebuilds every broker connection (broker_connection_retry).
    "retry_on_timeout": False,
    "max_connections": REDIS_MAX_CONNECTIONS,
    # How often the worker looks for messages of dead workers to restore.
    "unacked_restore_interval": env.int("CELERY_UNACKED_RESTORE_INTERVAL", default=10),
    "unacked_restore_throttle": 1,
}
_result_backend_transport_options = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # A caller does not reconnect to a result backend that does not answer: .delay()
    # raises at once (taskcore.base.TaskNotSent). Workers and beat: ~2 s of retries.
    "retry_policy": {"max_retries": 0},
}

# Broker-specific options follow the URL's scheme (taskcore/brokers.py):
# redis:// rediss://, sentinel://h1:26379;sentinel://h2:26379 (Redis behind
# Sentinel), amqp:// pyamqp:// (RabbitMQ). See docs/scaling.md.
from taskcore import brokers  # noqa: E402 - Django-free helper, imported where it is used

BROKER_KIND = brokers.broker_kind(CELERY_BROKER_URL)
# Sentinel: the monitored primary's name and the Sentinels' own password; the
# primary's password is REDIS_PASSWORD (or the one in the URL).
REDIS_SENTINEL_MASTER = env_or("REDIS_SENTINEL_MASTER", "mymaster")
REDIS_SENTINEL_PASSWORD = env_or("REDIS_SENTINEL_PASSWORD", "")
# (Also how taskcore.redis_clients finds the primary of a sentinel:// state URL.)
REDIS_SENTINEL_OPTIONS: dict[str, object] = {"master_name": REDIS_SENTINEL_MASTER}
if REDIS_SENTINEL_PASSWORD:
    REDIS_SENTINEL_OPTIONS["sentinel_kwargs"] = {"password": REDIS_SENTINEL_PASSWORD}
# RabbitMQ closes a channel whose delivery stays unacknowledged longer than its
# consumer_timeout (server setting, 1800 s by default) and redelivers the
# message: state here what the server uses, the audit compares it with the
# longest time limit (it must be longer, like the Redis visibility timeout).
CELERY_RABBITMQ_CONSUMER_TIMEOUT = env.int("RABBITMQ_CONSUMER_TIMEOUT", default=1800)

# kombu's Redis transport loses a message taken by a worker that dies (or a Redis
# that restarts) between its BRPOP and the unacked record; ours reserves
# atomically (taskcore/reliable_redis.py). Off only to measure the difference.
CELERY_BROKER_ATOMIC_RESERVE = env.bool("CELERY_BROKER_ATOMIC_RESERVE", default=True)
# (rediss:// keeps kombu's transport: kombu turns TLS on from that scheme only.)
_broker_scheme = CELERY_BROKER_URL.split("://", 1)[0].lower()
if CELERY_BROKER_ATOMIC_RESERVE and _broker_scheme in ("redis", "sentinel"):
    # Registered under kombu's redis/sentinel aliases, not as CELERY_BROKER_TRANSPORT:
    # the URL stays redis:// or sentinel:// for Celery, `celery inspect` and Flower
    # (whose queue lengths answer only for those schemes). Every process that uses
    # the app (worker, beat, flower, web, manage.py) loads these settings before
    # its first broker connection.
    from taskcore import reliable_redis

    reliable_redis.use_for_redis_urls()

if BROKER_KIND == brokers.SENTINEL:
    CELERY_BROKER_URL = brokers.with_password(CELERY_BROKER_URL, REDIS_PASSWORD)
    if os.environ.get("CELERY_BROKER_URL"):
        # Celery reads this variable itself, over the setting: keep the two equal.
        os.environ["CELERY_BROKER_URL"] = CELERY_BROKER_URL
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **_redis_transport_options,
        **REDIS_SENTINEL_OPTIONS,
        # Replication is asynchronous: a primary killed right after a publish takes
        # the message with it. A publish returns once this many replicas have it
        # (Redis WAIT; taskcore/reliable_redis.py), else it is retried.
        "replica_acks": env.int("CELERY_BROKER_REPLICA_ACKS", default=1),
        "replica_ack_timeout": env.int("CELERY_BROKER_REPLICA_ACK_TIMEOUT_MS", default=1000),
    }
elif BROKER_KIND == brokers.AMQP:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Publisher confirms: publish() returns once RabbitMQ has the message
        # (for quorum queues: a majority of replicas); a nack raises.
        "confirm_publish": True,
    }
    # Topic exchanges: Celery's native delayed delivery (countdown, ETA, retry
    # backoff on quorum queues) cannot route through direct exchanges.
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
    if not os.environ.get("CELERY_RESULT_BACKEND"):
        # RabbitMQ is no result backend; results (and the cache) stay on Redis.
        CELERY_RESULT_BACKEND = REDIS_URL
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **_redis_transport_options,
        "replica_acks": env.int("CELERY_BROKER_REPLICA_ACKS", default=0),
        "replica_ack_timeout": env.int("CELERY_BROKER_REPLICA_ACK_TIMEOUT_MS", default=1000),
    }

# Workers and beat: a broker that does not answer for a while is waited for (an
# outage, a failover), publishes retried (Celery's default policy).
LONG_RUNNING_BROKER_OPTIONS = {
    "broker_transport_options": {
        **CELERY_BROKER_TRANSPORT_OPTIONS,
        **(
            {
                "socket_timeout": env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=10.0),
                "socket_connect_timeout": REDIS_SOCKET_CONNECT_TIMEOUT,
            }
            if BROKER_KIND in (brokers.REDIS, brokers.SENTINEL)
            else {}
        ),
    },
    "task_publish_retry_policy": {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    },
}

if brokers.broker_kind(CELERY_RESULT_BACKEND) == brokers.SENTINEL:
    CELERY_RESULT_BACKEND = brokers.with_password(CELERY_RESULT_BACKEND, REDIS_PASSWORD)
    if os.environ.get("CELERY_RESULT_BACKEND"):
        os.environ["CELERY_RESULT_BACKEND"] = CELERY_RESULT_BACKEND
    _result_backend_transport_options.update(REDIS_SENTINEL_OPTIONS)
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = _result_backend_transport_options
# The apps' own state in Redis: e-mail sent marks, dashboard counters and samples,
# beat's heartbeat and lock, parked dead letters (every client: taskcore/redis_clients.py).
# Default: the broker's Redis (its primary, behind Sentinel), whose durability the
# queue already needs; beside a RabbitMQ broker, REDIS_URL.
TASKCORE_STATE_REDIS_URL = env_or(
    "TASKCORE_STATE_REDIS_URL",
    CELERY_BROKER_URL if BROKER_KIND in (brokers.REDIS, brokers.SENTINEL) else REDIS_URL,
)
# A worker rides out a Redis outage (a Sentinel failover takes seconds, measured in
# R6; a Redis at maxmemory refuses writes until memory is freed, R8) when it stores
# a task's state: without this, the STARTED state or the result failing to store
# fails a task whose work was fine, or never ran it. Exponential backoff with full
# jitter from 100 ms to 4 s, 60 retries (about 2 minutes). Workers only (applied
# when a worker starts, admin_backend/celery.py): a web request keeps failing fast,
# it must not hang on a Redis that is away.
WORKER_RESULT_BACKEND_RETRY = {
    "result_backend_always_retry": True,
    "result_backend_max_retries": env.int("CELERY_RESULT_BACKEND_MAX_RETRIES", default=60),
    "result_backend_base_sleep_between_retries_ms": 100,
    "result_backend_max_sleep_between_retries_ms": 4000,
}
CELERY_REDIS_SOCKET_KEEPALIVE = True
# .delay() subscribes to its result in the result backend: a caller waits on it no
# longer than on the broker; workers and beat as long as on any Redis.
CELERY_REDIS_SOCKET_TIMEOUT = CELERY_CALLER_TIMEOUT / 2.5
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = CELERY_CALLER_TIMEOUT / 2.5
CELERY_REDIS_RETRY_ON_TIMEOUT = False
LONG_RUNNING_BROKER_OPTIONS.update(
    redis_socket_timeout=REDIS_SOCKET_TIMEOUT,
    redis_socket_connect_timeout=REDIS_SOCKET_CONNECT_TIMEOUT,
    redis_retry_on_timeout=True,
    result_backend_transport_options={
        **CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS,
        "retry_policy": {
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
    },
)
CELERY_REDIS_BACKEND_HEALTH_CHECK_INTERVAL = REDIS_HEALTH_CHECK_INTERVAL
CELERY_REDIS_MAX_CONNECTIONS = REDIS_MAX_CONNECTIONS
if CELERY_BROKER_URL.startswith("rediss://"):
    import ssl

    CELERY_BROKER_USE_SSL = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
if CELERY_RESULT_BACKEND.startswith("rediss://"):
    import ssl

    CELERY_REDIS_BACKEND_USE_SSL = {"ssl_cert_reqs": ssl.CERT_REQUIRED}

# Task execution (the spec's values).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A message whose worker died this many times is a dead letter, not run again (taskcore/base.py).
CELERY_MAX_DELIVERIES = env.int("CELERY_MAX_DELIVERIES", default=3)
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_WORKER_MAX_TASKS_PER_CHILD", default=1000)
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=4)
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=True)
CELERY_TASK_SEND_SENT_EVENT = True
# Task events for Flower are published in batches: a worker's at most this many
# seconds after the event (taskcore/consumer.py), a caller's task-sent events by a
# per-process buffer (taskcore/sending.py). 0: one by one, as Celery does (one
# Redis round trip each; B1 steady in docs/benchmarks.md says what that costs).
TASKCORE_EVENT_FLUSH_SECONDS = env.float("TASKCORE_EVENT_FLUSH_SECONDS", default=0.2)
TASKCORE_SENT_EVENT_FLUSH_SECONDS = env.float("TASKCORE_SENT_EVENT_FLUSH_SECONDS", default=0.2)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# A message that is not a valid task message becomes a dead letter (reason
# "refused"); it never reaches, nor stops, the worker (taskcore/consumer.py).
CELERY_WORKER_CONSUMER = "taskcore.consumer:GuardedConsumer"
# Stall watchdog (taskcore/watchdog.py): messages wait, slots are free, nothing
# taken for this many seconds -> the worker restarts its consumer, and exits with
# status 69 when that does not help within as long again. 0 turns it off.
CELERY_WORKER_STALL_SECONDS = env.float("CELERY_WORKER_STALL_SECONDS", default=60.0)

# JSON only: a pickle message is refused by the worker, never deserialised.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = env.int("CELERY_RESULT_EXPIRES", default=24 * 3600)
CELERY_RESULT_EXTENDED = True

# Queues and routing, derived from the queue table.
CELERY_TASK_QUEUES = TASKCORE_QUEUE_TABLE.kombu_queues(CELERY_BROKER_URL)
CELERY_TASK_DEFAULT_QUEUE = TASKCORE_QUEUE_TABLE.default_queue
CELERY_TASK_DEFAULT_EXCHANGE = TASKCORE_QUEUE_TABLE.default_queue
CELERY_TASK_DEFAULT_ROUTING_KEY = TASKCORE_QUEUE_TABLE.default_queue
CELERY_TASK_CREATE_MISSING_QUEUES = False
CELERY_TASK_ROUTES = (TASKCORE_QUEUE_TABLE.route_task,)
CELERY_TASK_ANNOTATIONS = (TASKCORE_QUEUE_TABLE.annotations,)

# Extra task modules beyond each app's tasks.py (the tests add taskcore.testing.tasks).
CELERY_IMPORTS = tuple(env.list("CELERY_EXTRA_TASK_MODULES", default=[]))

# DatabaseScheduler + a Redis lock (one beat at a time) and a heartbeat (celery_health: beat).
CELERY_BEAT_SCHEDULER = "taskcore.beat_liveness:LivenessScheduler"
CELERY_TIMEZONE = TIME_ZONE

# --- Logging -----------------------------------------------------------------
# Relative paths are relative to PROJECT_DIR (PROJECT_DIR / absolute = absolute).
LOG_DIR = PROJECT_DIR / env_or("LOG_DIR", "logs")
CELERY_LOG_LEVEL = env_or("CELERY_LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_or("LOG_FORMAT", "text")
LOG_MAX_BYTES = env.int("LOG_MAX_BYTES", default=10 * 1024 * 1024)
LOG_BACKUP_COUNT = env.int("LOG_BACKUP_COUNT", default=5)
# summary: one line per task in celery_tasks.log (problems also in the console and
# the role's file); verbose: received/started/finished everywhere (taskcore/logging.py).
CELERY_TASK_LOG_LINES = env_or("CELERY_TASK_LOG_LINES", "summary").lower()
# False: no received/started/finished task lines at all (problems are still logged).
CELERY_TASK_LIFECYCLE_LOG = env.bool("CELERY_TASK_LIFECYCLE_LOG", default=True)
# celery_tasks.log is written in groups: a task line waits at most this long (a
# file lock per group, not per line); WARNING and worse at once; 0: a write per line.
CELERY_TASK_LOG_FLUSH_SECONDS = env.float("CELERY_TASK_LOG_FLUSH_SECONDS", default=0.2)
# One configuration per program: each also writes its own file (celery_worker.log,
# celery_beat.log, flower.log). Django applies LOGGING (the web's) to every process;
# a Celery program switches to its role's when it starts (admin_backend/celery.py).
LOGGING_BY_ROLE = {
    role: build_logging_config(
        log_dir=Path(LOG_DIR),
        level=CELERY_LOG_LEVEL,
        log_format=LOG_FORMAT,
        role=role,
        max_bytes=LOG_MAX_BYTES,
        backup_count=LOG_BACKUP_COUNT,
        task_lines=CELERY_TASK_LOG_LINES,
        task_log_flush_seconds=CELERY_TASK_LOG_FLUSH_SECONDS,
    )
    for role in PROCESS_ROLES
}
LOGGING = LOGGING_BY_ROLE["web"]
LOGGING_CONFIG = "admin_backend.celery.configure_logging"
