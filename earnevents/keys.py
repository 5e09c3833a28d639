"""Names shared by publishers and workers: the task name and every Redis key.

All Redis keys earnevents writes (besides the Celery queue list itself, which is
named after ``queue_name``) start with :data:`PREFIX`.
"""

from __future__ import annotations

PREFIX = "earnevents"

QUEUE_KEY_WORDS = frozenset(
    {
        "scheduled",
        "outbox-lock",
        "failed",
        "inflight",
        "inflight-consumers",
        "dead",
        "eventlog",
        "occurrences",
        "workflows",
    }
)
"""What follows ``<PREFIX>:<queue>:`` in a per-queue key. Queue names may not contain these
as ``:``-separated parts (``names.check_queue_name``): the first such part of a key then marks
where its queue name ends, so no queue's keys are another queue's."""

GLOBAL_KEY_WORDS = frozenset(
    {"dedup", "claims", "failed-job", "consumer-alive", "unacked", "unacked_index", "unacked_mutex", "logged-event"}
)
"""What follows ``<PREFIX>:`` in a key shared by all queues (reserved in queue names too)."""

RESERVED_WORDS = QUEUE_KEY_WORDS | GLOBAL_KEY_WORDS

TASK_NAME = "earnevents.dispatch"
"""The Celery task that runs an event's handlers. Publishers know it by name only."""


def scheduled_zset(queue: str) -> str:
    """Sorted set of message ids due later on ``queue``, scored by due time (unix seconds)."""
    return f"{PREFIX}:{queue}:scheduled"


def scheduled_payloads(queue: str) -> str:
    """Hash of message id -> Celery message waiting in :func:`scheduled_zset`."""
    return f"{PREFIX}:{queue}:scheduled:messages"


def scheduled_names(queue: str) -> str:
    """Hash of message id -> event name for messages in :func:`scheduled_zset`."""
    return f"{PREFIX}:{queue}:scheduled:names"


def scheduled_by_event(queue: str, event_name: str) -> str:
    """Sorted set of scheduled message ids of one event name, scored by due time."""
    return f"{PREFIX}:{queue}:scheduled:event:{event_name}"


def scheduled_wake_channel(queue: str) -> str:
    """Pub/sub channel (not a key) on which every script adding to :func:`scheduled_zset` announces
    a due time earlier than any pending there (unix seconds as the message): it wakes the workers'
    delay schedulers, which otherwise sleep until the earliest due time they know of."""
    return f"{PREFIX}:{queue}:scheduled:wake"


OCCURRENCE_HANDLER = "earnevents.worker.occurrences.fire"
"""The worker's handler that fires a model's scheduled event when it is due (after checking the
document again). Models schedule occurrences for it by name only, as publishers name TASK_NAME."""


def occurrence_member(model: str, record_id: str, definition: str) -> str:
    """The delay-schedule id of the one pending occurrence of a model's scheduled event for one
    document (what ``cancel`` takes): scheduling again replaces it."""
    return f"model-event:{model}:{record_id}:{definition}"


def occurrences_rebuilt(queue: str) -> str:
    """Set of the model names whose pending occurrences are in ``queue``'s schedule since it was
    last rebuilt; missing (Redis lost its data) means workers rebuild them from MongoDB."""
    return f"{PREFIX}:{queue}:occurrences"


def occurrences_rebuilding(queue: str, token: str) -> str:
    """Exists while one rebuild of ``queue``'s occurrences runs: gone at its end means Redis
    lost its data meanwhile, and what the rebuild added before then with it."""
    return f"{PREFIX}:{queue}:occurrences:rebuilding:{token}"


def occurrences_lock(queue: str) -> str:
    """Held (with a TTL) by the one worker rebuilding ``queue``'s model occurrences."""
    return f"{PREFIX}:{queue}:occurrences:lock"


WORKFLOW_HANDLER = "earnevents.worker.workflows.advance"
"""The worker's handler that moves a workflow run on (runs a step, wakes a sleeping run, times a wait out)."""

MONGO_WORKFLOW_RUNS = "earnevents_workflow_runs"
"""Collection of workflow runs (``earnevents.workflows.runs``)."""

MONGO_WORKFLOW_SIGNALS = "earnevents_workflow_signals"
"""Collection of recent signals and events runs may wait for (kept a day)."""


def workflow_wake(run_id: str, version: int) -> str:
    """The delay-schedule id of the wake-up of run ``run_id`` at ``version`` (a sleep's end, a
    wait's timeout, a retry). Each state has its own: a timeout scheduled late, after a signal had
    already moved the run on, cannot replace the wake-up of the state the run is in now."""
    return f"workflow-run:{run_id}:{version}"


def workflows_rebuilt(queue: str) -> str:
    """Set when ``queue``'s active workflow runs have their messages in Redis; missing (Redis lost
    its data) means workers send them again from MongoDB."""
    return f"{PREFIX}:{queue}:workflows"


def workflows_rebuilding(queue: str, token: str) -> str:
    """Exists while one worker sends ``queue``'s active runs' messages again: gone at its end
    means Redis lost its data meanwhile, and what was sent before then with it."""
    return f"{PREFIX}:{queue}:workflows:rebuilding:{token}"


def workflows_lock(queue: str) -> str:
    """Held (with a TTL) by the one worker sending ``queue``'s workflow runs' messages again."""
    return f"{PREFIX}:{queue}:workflows:lock"


def outbox_lock(queue: str) -> str:
    """Held (with a TTL) by the one worker relaying ``queue``'s MongoDB outbox, to keep order."""
    return f"{PREFIX}:{queue}:outbox-lock"


def dedup_buckets(bucket_ms: int) -> str:
    """Prefix of the completion records kept for the dedup window, in buckets of ``bucket_ms``.

    Under it, per time bucket ``<n>`` (Redis time // ``bucket_ms``): the hash ``<prefix><n>``
    (its last generation ``g``, shard count per generation ``n<g>``, record count ``c``) and the integer sets
    ``<prefix><n>:<generation>:<shard>`` of completed job digests, each expiring one window
    after its bucket ends (see ``worker.completions``).
    """
    return f"{PREFIX}:dedup:{bucket_ms}:"


def job_claims(event_id: str) -> str:
    """Hash of handler -> the claim of the message running that job of the event (in flight only)."""
    return f"{PREFIX}:claims:{event_id}"


def failed_index(queue: str) -> str:
    """Sorted set of the ids of ``queue``'s failed jobs scored by failure time (Redis store)."""
    return f"{PREFIX}:{queue}:failed"


def failed_by_event(queue: str, event_name: str) -> str:
    """Sorted set of failed job ids of one event name."""
    return f"{PREFIX}:{queue}:failed:event:{event_name}"


def failed_by_handler(queue: str, handler: str) -> str:
    """Sorted set of failed job ids of one handler."""
    return f"{PREFIX}:{queue}:failed:handler:{handler}"


def failed_by_event_handler(queue: str, event_name: str, handler: str) -> str:
    """Sorted set of failed job ids of one handler for one event name."""
    return f"{PREFIX}:{queue}:failed:event-handler:{event_name}:{handler}"


def failed_keys(queue: str) -> str:
    """Hash of failed job id -> JSON list of its record key and its per-event/handler index keys,
    so the Redis store's scripts can trim a job with everything that names it."""
    return f"{PREFIX}:{queue}:failed:keys"


def failed_errors(queue: str) -> str:
    """Hash of failed job id -> its error text (Redis store): the error filter reads these, many
    per call, instead of each whole record."""
    return f"{PREFIX}:{queue}:failed:errors"


def failed_job(job_id: str) -> str:
    """String key holding one failed job record as JSON (ids are unique across queues)."""
    return f"{PREFIX}:failed-job:{job_id}"


def eventlog_index(queue: str) -> str:
    """Sorted set of the ids of ``queue``'s logged events scored by publish time (Redis event log)."""
    return f"{PREFIX}:{queue}:eventlog"


def eventlog_by_name(queue: str, event_name: str) -> str:
    """Sorted set of logged event ids of one event name."""
    return f"{PREFIX}:{queue}:eventlog:name:{event_name}"


def eventlog_by_sender(queue: str, sender: str) -> str:
    """Sorted set of logged event ids of one sender."""
    return f"{PREFIX}:{queue}:eventlog:sender:{sender}"


def eventlog_record(event_id: str) -> str:
    """Hash holding one event's log record: the event, its times, one field per handler."""
    return f"{PREFIX}:logged-event:{event_id}"


MONGO_EVENTLOG_COLLECTION = "earnevents_events"
"""Collection of event log records (the MongoDB event log)."""


UNACKED = f"{PREFIX}:unacked"
"""kombu's hash of unacknowledged messages (its ``unacked_key`` option), earnevents' own so a
plain Celery app on the same Redis database keeps its own records and visibility timeout."""

UNACKED_INDEX = f"{PREFIX}:unacked_index"
"""kombu's sorted set of unacknowledged delivery tags by delivery time (``unacked_index_key``)."""

UNACKED_MUTEX = f"{PREFIX}:unacked_mutex"
"""kombu's lock around restoring unacknowledged messages (``unacked_mutex_key``)."""


MONGO_FAILED_COLLECTION = "earnevents_failed_jobs"
"""Collection of failed job records (the MongoDB failure store)."""


def inflight_list(queue: str, consumer: str) -> str:
    """List holding what ``consumer`` took from ``queue`` but has not yet recorded as unacked."""
    return f"{PREFIX}:{queue}:inflight:{consumer}"


def inflight_consumers(queue: str) -> str:
    """Set of consumer ids that have an :func:`inflight_list` for ``queue``."""
    return f"{PREFIX}:{queue}:inflight-consumers"


def consumer_alive(consumer: str) -> str:
    """Key a live consumer keeps fresh (TTL); when it expires, its in-flight lists are returned."""
    return f"{PREFIX}:consumer-alive:{consumer}"


def dead_index(queue: str) -> str:
    """Sorted set of the ids of items workers refused from ``queue``, scored by drop time."""
    return f"{PREFIX}:{queue}:dead"


def dead_items(queue: str) -> str:
    """Hash of dead item id -> the refused item's record as JSON (see ``deadletters``)."""
    return f"{PREFIX}:{queue}:dead:items"


def stats_minute(queue: str, minute: int) -> str:
    """Hash of ``queue``'s handler outcomes in one minute (``minute``: unix seconds // 60):
    fields ``succeeded``, ``retried``, ``failed`` (see ``stats``)."""
    return f"{PREFIX}:{queue}:stats:{minute}"
