"""Errors raised by earnevents.

Every error derives from :class:`EarnEventsError`, so ``except EarnEventsError``
catches anything the library raises on purpose::

    EarnEventsError
    ├── ConfigError (ValueError)          bad init() arguments or environment
    ├── NotInitializedError (RuntimeError) publish/query before init()
    ├── PublishError                      the broker could not take the event in time
    │   └── OutboxFullError               ... and the MongoDB outbox holds its maximum already
    ├── EventTooLargeError (ValueError)   the event's message is over the maximum message size
    ├── JobNotFoundError (LookupError)    no failed job with that id
    ├── EventNotFoundError (LookupError)  no event log record with that id
    ├── HandlerNotFoundError (LookupError) a message names a handler the worker lacks
    ├── DeadItemNotFoundError (LookupError) no dead-lettered queue item with that id
    ├── HandlerTimeoutError (TimeoutError) a handler ran longer than its timeout
    ├── ReceiverSignatureError (TypeError) an @on receiver cannot take what it would be called with
    ├── WorkerLostError                   the worker process died while running a handler, again and again
    ├── ModelValidationError (ValueError) a model field got a value of the wrong type
    ├── EventValidationError (ValueError) an event's data does not fit its defined schema
    ├── UndefinedEventError (ValueError)  strict mode: an event name nobody defined
    ├── EventDefinitionError (ValueError) define_event: one name defined twice, differently
    ├── ModelStateError (RuntimeError)    a model write that does not fit its stored state
    └── EventConditionError (RuntimeError) an EventDefinition's condition raised

Bad event input (not an Event, empty name, unserializable data, negative delay)
raises the built-in ``TypeError``/``ValueError`` at publish time, before anything
is sent.
"""

from __future__ import annotations


class EarnEventsError(Exception):
    """Root of every error earnevents raises on purpose."""


class ConfigError(EarnEventsError, ValueError):
    """Raised when init() arguments or EARNEVENTS_* variables are invalid."""


class NotInitializedError(EarnEventsError, RuntimeError):
    """Raised when the event bus is used before ``await earnevents.init(...)``."""


class PublishError(EarnEventsError):
    """Raised when an event could not be handed to Redis within ``publish_timeout``."""


class OutboxFullError(PublishError):
    """Raised when Redis is unreachable and the queue's MongoDB outbox already holds
    ``EARNEVENTS_OUTBOX_MAX`` documents: the events were not stored anywhere."""


class EventTooLargeError(EarnEventsError, ValueError):
    """Raised when an event's queue message would be larger than workers accept
    (``max_message_size``); nothing is sent."""


class JobNotFoundError(EarnEventsError, LookupError):
    """Raised when no failed job has the given id (it was retried or removed)."""


class EventNotFoundError(EarnEventsError, LookupError):
    """Raised when the event log holds no record with the given id (never published with the
    event log on, or older than EARNEVENTS_EVENT_LOG_TTL)."""


class HandlerNotFoundError(EarnEventsError, LookupError):
    """Raised when a message names a handler that no imported module registered."""


class HandlerTimeoutError(EarnEventsError, TimeoutError):
    """Raised in place of a handler's result when it ran longer than its ``timeout``;
    the worker treats it as that handler's failure (retried, then recorded)."""


class ReceiverSignatureError(EarnEventsError, TypeError):
    """Raised when an ``@on`` receiver's parameters cannot take its calls: when it is
    registered (no positional parameter for the sender first, a parameter no call
    fills), or in the worker when an event's data has keys it does not name (and it
    takes no ``**kwargs``), lacks one it requires, or clashes with ``event``/its
    sender parameter. In the worker it is the job's failure, recorded at once
    without retries (it would fail the same way every time)."""


class WorkerLostError(EarnEventsError):
    """Raised (recorded as the job's failure) when the worker process died while running
    a handler on each of ``EARNEVENTS_MAX_DELIVERIES`` deliveries of its message."""


class ModelValidationError(EarnEventsError, ValueError):
    """Raised when a model field is given a value its annotation refuses, or a required
    field is still missing when the model is written; nothing is written."""


class ModelStateError(EarnEventsError, RuntimeError):
    """Raised when a model operation does not fit its state: deleting one never stored,
    creating one already stored, or saving one whose document was deleted elsewhere."""


class DeadItemNotFoundError(EarnEventsError, LookupError):
    """Raised when no dead-lettered queue item has the given id (it was removed or aged out)."""


class EventValidationError(EarnEventsError, ValueError):
    """Raised when an event's data does not fit the schema its name was defined with
    (``define_event(name, schema=...)``), at publish or when the definition builds an
    event; the message names the event and each field. Nothing is sent.

    ``errors`` holds pydantic's error details (``loc``, ``msg``, ``type``, ...)."""

    def __init__(self, message: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class UndefinedEventError(EarnEventsError, ValueError):
    """Raised in strict mode when an event name has no ``define_event``: at publish
    (nothing is sent), or at worker start for a handler subscribing to one."""


class EventDefinitionError(EarnEventsError, ValueError):
    """Raised when ``define_event`` is given a name already defined with other contents
    (schema, description, codes or metadata)."""


class EventConditionError(EarnEventsError, RuntimeError):
    """Raised when the condition of a model's ``EventDefinition`` raises: the message names
    the event, the model and the document; the condition's exception is its ``__cause__``.

    After a write the write stands (as after an after-hook that raises) and the model's
    other definitions were maintained; a worker firing the occurrence retries and then
    records a failed job; a rebuild counts the document as unreadable and goes on."""
