"""What the worker's background threads share.

The delay scheduler, the keep-alive and the outbox relay each call ``tick()``
every few seconds in a daemon thread of the worker's main process, log one
warning per Redis/MongoDB outage (not one per tick), and are started and
stopped by a Celery worker bootstep. Any other error in a tick is logged with
its traceback (once until a tick succeeds) and the thread goes on: a dead
keep-alive would let live workers' messages be redelivered, a dead scheduler
would hold every delayed event.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import redis
from celery import bootsteps

from .. import mongoerrors
from ..logtext import get_logger

log = get_logger(__name__)

# Fork safety. A prefork worker forks pool processes from its main thread at start and
# whenever a child is replaced; these threads run in that same process. A thread inside
# OpenSSL (a TLS handshake to Redis or MongoDB) at the moment of fork leaves OpenSSL's
# locks held in the child for good, and the child blocks forever at its first TLS
# connection. So each thread does its I/O (one tick) holding its own lock, and a fork
# first takes every such lock: it waits for running ticks to end (usually milliseconds;
# a hung server costs the clients' timeouts, a full outbox its drain) and no tick starts
# until the fork is done. Nothing else runs in these threads, so a fork cannot deadlock.
_threads: weakref.WeakSet[PeriodicThread] = weakref.WeakSet()
_held: list[threading.Lock] = []


def _before_fork() -> None:
    for thread in list(_threads):
        thread._io.acquire()
        _held.append(thread._io)


def _after_fork() -> None:
    while _held:
        _held.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Lua releasing a lock a thread took with ``SET key token NX PX``: only while it holds the token
(a lock that expired and another worker took stays taken)."""


class PeriodicThread:
    """Calls :meth:`tick` every ``interval`` seconds until :meth:`stop`."""

    what = "background thread"
    """How log lines name it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"earnevents-{self.what}", daemon=True)
        self._io = threading.Lock()  # held during tick(); taken by a fork (see _before_fork)
        _threads.add(self)

    def tick(self) -> None:
        """One round of work; any error is logged and the round retried next interval."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients once the thread has stopped."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.close()

    def on_error(self) -> None:
        """Called after a round raised (before it is logged): drop what may be broken."""

    def pause(self, failing: bool) -> None:
        """Wait before the next round (``failing``: the last one raised); one interval here."""
        self._stop.wait(self.interval)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                with self._io:
                    self.tick()
            except (redis.RedisError, mongoerrors.base()) as exc:
                self.on_error()
                if not failing:
                    log.warning("%s cannot reach Redis/MongoDB (%r); retrying every %gs", self.what, exc, self.interval)
                failing = True
            except Exception as exc:  # a bug or an unforeseen reply: keep the thread alive
                self.on_error()
                if not failing:
                    log.exception("%s failed (%r); retrying every %gs", self.what, exc, self.interval)
                failing = True
            else:
                if failing:
                    log.info("%s works again", self.what)
                failing = False
            if self._stop.is_set():
                break
            self.pause(failing)


class ThreadStep(bootsteps.StartStopStep):
    """A worker bootstep owning the :class:`PeriodicThread` that :meth:`create` builds."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: PeriodicThread | None = None

    def create(self, worker: Any) -> PeriodicThread | None:
        """The thread to run for ``worker``, or None when it has nothing to do."""
        raise NotImplementedError

    def start(self, worker: Any) -> None:
        self.thread = self.create(worker)
        if self.thread is not None:
            self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    shutdown = stop


def consumed_queues(worker: Any) -> list[str]:
    """The queues ``worker`` consumes (``-Q``, else the default queue)."""
    app = worker.app
    return sorted(app.amqp.queues.consume_from or [app.conf.task_default_queue])
