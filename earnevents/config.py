"""Settings: what init() is given, else the EARNEVENTS_* environment, else defaults.

The same resolution serves application processes (``init()``) and workers (which
only have the environment), so both sides agree on the queue and on where failed
jobs live. ``config/earnevents.env`` in the repository lists every variable with
its default; a test keeps it equal to :data:`DEFAULTS`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from . import names, redisurl
from .discovery import check_package_name
from .errors import ConfigError
from .redact import redact_uri
from .retry import MAX_INTERVAL, MAX_RETRIES, RetryCaps, RetryPolicy

ENV_PREFIX = "EARNEVENTS_"

MIN_MESSAGE_SIZE = 4096
"""The smallest EARNEVENTS_MAX_MESSAGE_SIZE accepted (bytes)."""

MAX_FAILED_AGE = 100 * 365 * 86400
"""The largest EARNEVENTS_FAILED_MAX_AGE (and EARNEVENTS_EVENT_LOG_TTL) accepted (seconds, about 100 years)."""

DEFAULTS: dict[str, str] = {
    "EARNEVENTS_REDIS_URI": "redis://localhost:6379/0",
    "EARNEVENTS_MONGO_URI": "",
    "EARNEVENTS_DATABASE": "earnevents",
    "EARNEVENTS_QUEUE": "earnevents",
    "EARNEVENTS_HANDLER_MODULES": "",
    "EARNEVENTS_AUTODISCOVER": "",
    "EARNEVENTS_STRICT": "0",
    "EARNEVENTS_RETRY_POLICY": "",
    "EARNEVENTS_PUBLISH_TIMEOUT": "10",
    "EARNEVENTS_VISIBILITY_TIMEOUT": "40",
    "EARNEVENTS_SCHEDULER_INTERVAL": "0.2",
    "EARNEVENTS_SCHEDULER_RECHECK": "10",
    "EARNEVENTS_DEDUP_WINDOW": "86400",
    "EARNEVENTS_MAX_MESSAGE_SIZE": "4194304",
    "EARNEVENTS_DEAD_LETTER_MAX": "10000",
    "EARNEVENTS_HANDLER_TIMEOUT": "",
    "EARNEVENTS_MAX_DELIVERIES": "5",
    "EARNEVENTS_FAILED_MAX": "100000",
    "EARNEVENTS_FAILED_MAX_AGE": "2592000",
    "EARNEVENTS_OUTBOX_MAX": "1000000",
    "EARNEVENTS_MAX_RETRIES_CAP": "100",
    "EARNEVENTS_MIN_RETRY_INTERVAL": "0.1",
    "EARNEVENTS_EVENT_LOG": "0",
    "EARNEVENTS_EVENT_LOG_TTL": "604800",
    "EARNEVENTS_METRICS": "0",
    "EARNEVENTS_METRICS_PORT": "",
    "EARNEVENTS_METRICS_HOST": "127.0.0.1",
    "EARNEVENTS_TASK_LOG": "0",
}
"""Every environment variable earnevents reads, with its default ("" means unset)."""

DEFAULT_RETRY_CAPS = RetryCaps(
    int(DEFAULTS["EARNEVENTS_MAX_RETRIES_CAP"]), float(DEFAULTS["EARNEVENTS_MIN_RETRY_INTERVAL"])
)


@dataclass(frozen=True, kw_only=True)
class EventConfig:
    """The ``event_config`` dict of ``init()``; every key is optional.

    A frozen dataclass checked by hand (a ValueError or TypeError naming the key), not a
    pydantic model: every process builds one, and pydantic is megabytes per worker process.
    """

    queue_name: str = DEFAULTS["EARNEVENTS_QUEUE"]
    """Celery queue (on Redis, a list of this name) events are published to; see ``names.check_queue_name``."""
    retry_policy: RetryPolicy | None = None
    """Policy carried by every message this process publishes; None: the worker's. A dict of its fields is taken too."""
    publish_timeout: float = float(DEFAULTS["EARNEVENTS_PUBLISH_TIMEOUT"])
    """Seconds publish() keeps retrying an unreachable Redis before PublishError."""
    outbox: bool | None = None
    """Store events in MongoDB while Redis is unreachable. None: on when a mongo_uri is set."""
    max_message_size: int = int(DEFAULTS["EARNEVENTS_MAX_MESSAGE_SIZE"])
    """Bytes: workers refuse larger queue items, so publish refuses such messages up front."""
    event_log: bool = False
    """Record every published event and its handlers' outcomes (``event_bus.get_event``); workers
    record when their EARNEVENTS_EVENT_LOG is on."""
    metrics: bool = False
    """Count published events in a Prometheus counter (``earnevents.metrics``); workers serving
    metrics (EARNEVENTS_METRICS_PORT) count the events their handlers publish regardless."""
    strict: bool = False
    """Refuse to publish event names no ``define_event`` defined (UndefinedEventError); workers
    refuse to start with a handler subscribed to one."""

    def __post_init__(self) -> None:
        if not isinstance(self.queue_name, str) or not self.queue_name:
            raise ValueError(f"queue_name must be a non-empty string, got {self.queue_name!r}")
        names.check_queue_name(self.queue_name, "queue_name")
        object.__setattr__(self, "retry_policy", RetryPolicy.coerce(self.retry_policy))
        timeout = self.publish_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise ValueError(f"publish_timeout must be a finite number of seconds, got {timeout!r}")
        if timeout <= 0:
            raise ValueError(f"publish_timeout must be positive, got {timeout!r}")
        object.__setattr__(self, "publish_timeout", float(timeout))
        size = self.max_message_size
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be a whole number of bytes >= {MIN_MESSAGE_SIZE}, got {size!r}")
        if self.outbox is not None and not isinstance(self.outbox, bool):
            raise ValueError(f"outbox must be true, false or None, got {self.outbox!r}")
        for name in ("event_log", "metrics", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to publish, handle and inspect events."""

    redis_uri: str
    mongo_uri: str | None
    database: str
    event: EventConfig
    handler_modules: tuple[str, ...] = ()
    autodiscover: tuple[str, ...] = ()
    """Packages whose events/handlers/receivers submodules are imported (earnevents.discovery)."""
    visibility_timeout: float = float(DEFAULTS["EARNEVENTS_VISIBILITY_TIMEOUT"])
    scheduler_interval: float = float(DEFAULTS["EARNEVENTS_SCHEDULER_INTERVAL"])
    """Most seconds a due message waits in the delay schedule before a worker moves it to the queue."""
    scheduler_recheck: float = float(DEFAULTS["EARNEVENTS_SCHEDULER_RECHECK"])
    """Most seconds an idle worker's scheduler sleeps between two reads of the schedule (it is woken
    for earlier due times; what it is not woken for, e.g. a publisher of an older version, waits this long at most)."""
    dedup_window: float = float(DEFAULTS["EARNEVENTS_DEDUP_WINDOW"])
    dead_letter_max: int = int(DEFAULTS["EARNEVENTS_DEAD_LETTER_MAX"])
    """How many refused queue items a worker keeps per queue (oldest dropped first)."""
    handler_timeout: float | None = None
    """Seconds a handler try may run unless it sets its own ``timeout``; None: no limit."""
    max_deliveries: int = int(DEFAULTS["EARNEVENTS_MAX_DELIVERIES"])
    """Deliveries of a message a job may die in (its worker process killed) before it is recorded as failed."""
    failed_max: int = int(DEFAULTS["EARNEVENTS_FAILED_MAX"])
    """Failed-job records kept per queue (the oldest deleted first when one more is added)."""
    failed_max_age: float = float(DEFAULTS["EARNEVENTS_FAILED_MAX_AGE"])
    """Seconds a failed-job record is kept after it failed; older ones are not listed and are deleted."""
    outbox_max: int = int(DEFAULTS["EARNEVENTS_OUTBOX_MAX"])
    """Outbox documents per queue; a publish that would go beyond raises OutboxFullError."""
    retry_caps: RetryCaps = DEFAULT_RETRY_CAPS
    """Bounds a worker holds the retry policy a message carries (its publisher's) within."""
    event_log_ttl: float = float(DEFAULTS["EARNEVENTS_EVENT_LOG_TTL"])
    """Seconds an event log record is kept after its last change."""
    metrics_port: int | None = None
    """TCP port a worker serves Prometheus metrics on (``earnevents.worker.metrics``); None: no metrics."""
    metrics_host: str = DEFAULTS["EARNEVENTS_METRICS_HOST"]
    """Address the metrics port binds to."""
    task_log: bool = False
    """Whether a worker writes Celery's INFO lines per task ("received", "succeeded in"); off:
    two log records per event less (earnevents' own lines for failures and retries stay)."""

    def __repr__(self) -> str:
        """The dataclass' repr with the URIs masked (``redact``): settings end up in logs and tracebacks."""
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("redis_uri", "mongo_uri") and value is not None:
                value = redact_uri(value)
            shown.append(f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def queue_name(self) -> str:
        return self.event.queue_name

    @property
    def max_message_size(self) -> int:
        return self.event.max_message_size

    @property
    def event_log(self) -> bool:
        """Whether this process records events in the event log."""
        return self.event.event_log

    @property
    def strict(self) -> bool:
        return self.event.strict

    @property
    def outbox(self) -> bool:
        """Whether publish falls back to the MongoDB outbox when Redis is unreachable."""
        return self.mongo_uri is not None and self.event.outbox is not False

    @classmethod
    def resolve(
        cls,
        *,
        redis_uri: str | None = None,
        mongo_uri: str | None = None,
        database: str | None = None,
        event_config: Mapping[str, Any] | EventConfig | None = None,
        handler_modules: tuple[str, ...] | list[str] | None = None,
        autodiscover: Iterable[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Merge explicit arguments over the environment over :data:`DEFAULTS`."""
        env = os.environ if environ is None else environ

        def pick(value: Any, var: str) -> str:
            if value is not None:
                return str(value)
            return env.get(var) or DEFAULTS[var]

        if isinstance(event_config, EventConfig):
            event = event_config
        else:
            given = dict(event_config or {})
            if "queue_name" not in given:
                given["queue_name"] = pick(None, "EARNEVENTS_QUEUE")
            if "retry_policy" not in given:
                given["retry_policy"] = _json_env(env, "EARNEVENTS_RETRY_POLICY")
            if "publish_timeout" not in given:
                given["publish_timeout"] = _float_env(env, "EARNEVENTS_PUBLISH_TIMEOUT")
            if "max_message_size" not in given:
                given["max_message_size"] = _int_env(env, "EARNEVENTS_MAX_MESSAGE_SIZE", MIN_MESSAGE_SIZE)
            if "event_log" not in given:
                given["event_log"] = _bool_env(env, "EARNEVENTS_EVENT_LOG")
            if "metrics" not in given:
                given["metrics"] = _bool_env(env, "EARNEVENTS_METRICS")
            if "strict" not in given:
                given["strict"] = _bool_env(env, "EARNEVENTS_STRICT")
            try:
                event = EventConfig(**given)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"invalid event_config: {exc}") from exc

        if handler_modules is None:
            raw = pick(None, "EARNEVENTS_HANDLER_MODULES")
            handler_modules = [m.strip() for m in raw.split(",") if m.strip()]
        if autodiscover is None:
            raw = pick(None, "EARNEVENTS_AUTODISCOVER")
            autodiscover = [m.strip() for m in raw.split(",") if m.strip()]
        elif isinstance(autodiscover, str):
            raise ConfigError("autodiscover takes a list of package names, e.g. ['myapp', 'billing']")
        packages = tuple(autodiscover)
        for package in packages:
            try:
                check_package_name(package, "EARNEVENTS_AUTODISCOVER / autodiscover package")
            except (TypeError, ValueError) as exc:
                raise ConfigError(str(exc)) from None
        mongo = pick(mongo_uri, "EARNEVENTS_MONGO_URI")
        redis = pick(redis_uri, "EARNEVENTS_REDIS_URI")
        redisurl.parse(redis)  # ConfigError now, not in the worker, for a URL no client can use
        if mongo and not mongo.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(f"mongo_uri must be a mongodb:// or mongodb+srv:// URL, got {redact_uri(mongo)!r}")
        if event.outbox and not mongo:
            raise ConfigError("event_config['outbox'] needs a mongo_uri: the outbox is a MongoDB collection")
        return cls(
            redis_uri=redis,
            mongo_uri=mongo or None,
            database=pick(database, "EARNEVENTS_DATABASE"),
            event=event,
            handler_modules=tuple(handler_modules),
            autodiscover=packages,
            visibility_timeout=_float_env(env, "EARNEVENTS_VISIBILITY_TIMEOUT"),
            scheduler_interval=_float_env(env, "EARNEVENTS_SCHEDULER_INTERVAL"),
            scheduler_recheck=_float_env(env, "EARNEVENTS_SCHEDULER_RECHECK"),
            dedup_window=_float_env(env, "EARNEVENTS_DEDUP_WINDOW", allow_zero=True),
            dead_letter_max=_int_env(env, "EARNEVENTS_DEAD_LETTER_MAX", 1),
            handler_timeout=_timeout_env(env, "EARNEVENTS_HANDLER_TIMEOUT"),
            max_deliveries=_int_env(env, "EARNEVENTS_MAX_DELIVERIES", 1),
            failed_max=_int_env(env, "EARNEVENTS_FAILED_MAX", 1),
            failed_max_age=_failed_age_env(env, "EARNEVENTS_FAILED_MAX_AGE"),
            outbox_max=_int_env(env, "EARNEVENTS_OUTBOX_MAX", 1),
            retry_caps=_retry_caps_env(env),
            event_log_ttl=_failed_age_env(env, "EARNEVENTS_EVENT_LOG_TTL"),
            metrics_port=_port_env(env, "EARNEVENTS_METRICS_PORT"),
            metrics_host=(env.get("EARNEVENTS_METRICS_HOST") or DEFAULTS["EARNEVENTS_METRICS_HOST"]).strip(),
            task_log=_bool_env(env, "EARNEVENTS_TASK_LOG"),
        )


def _float_env(env: Mapping[str, str], var: str, allow_zero: bool = False) -> float:
    raw = env.get(var) or DEFAULTS[var]
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{var} must be a finite number of seconds, got {raw!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{var} must be {'>= 0' if allow_zero else 'positive'}, got {raw!r}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _bool_env(env: Mapping[str, str], var: str) -> bool:
    raw = (env.get(var) or DEFAULTS[var]).strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{var} must be 1 or 0 (true/false, yes/no, on/off), got {raw!r}")


def _int_env(env: Mapping[str, str], var: str, minimum: int) -> int:
    raw = env.get(var) or DEFAULTS[var]
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{var} must be >= {minimum}, got {raw!r}")
    return value


def _failed_age_env(env: Mapping[str, str], var: str) -> float:
    value = _float_env(env, var)  # positive and finite
    if value > MAX_FAILED_AGE:
        raise ConfigError(f"{var} must be at most {MAX_FAILED_AGE} seconds (about 100 years), got {value:g}")
    return value


def _retry_caps_env(env: Mapping[str, str]) -> RetryCaps:
    retries = _int_env(env, "EARNEVENTS_MAX_RETRIES_CAP", 0)
    if retries > MAX_RETRIES:
        raise ConfigError(f"EARNEVENTS_MAX_RETRIES_CAP must be <= {MAX_RETRIES}, got {retries}")
    interval = _float_env(env, "EARNEVENTS_MIN_RETRY_INTERVAL", allow_zero=True)
    if interval > MAX_INTERVAL:  # NaN and inf are refused by _float_env already
        raise ConfigError(f"EARNEVENTS_MIN_RETRY_INTERVAL must be <= {MAX_INTERVAL:g} seconds, got {interval!r}")
    return RetryCaps(retries, interval)


def _timeout_env(env: Mapping[str, str], var: str) -> float | None:
    raw = (env.get(var) or DEFAULTS[var]).strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{var} must be a positive, finite number of seconds (or empty: none), got {raw!r}")
    return value


def _port_env(env: Mapping[str, str], var: str) -> int | None:
    raw = (env.get(var) or DEFAULTS[var]).strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a TCP port number (1-65535) or empty (off), got {raw!r}") from None
    if not 1 <= value <= 65535:
        raise ConfigError(f"{var} must be a TCP port number (1-65535) or empty (off), got {raw!r}")
    return value


def _json_env(env: Mapping[str, str], var: str) -> Any:
    raw = env.get(var) or DEFAULTS[var]
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{var} must be JSON such as '{{\"max_retries\": 3}}': {exc}") from exc
