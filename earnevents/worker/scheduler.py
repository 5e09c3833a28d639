"""Worker bootstep that moves due messages from the delay schedule onto the queue.

It runs in every worker (the main process, a thread of its own), so delayed
events and retry waits need no ``celery beat`` and no ETA messages held in worker
memory. Several workers moving from the same schedule is safe: the move is one Lua
script, so each due message is enqueued once.

An idle worker does not poll. Each move returns the earliest due time left, and the
thread sleeps until then, or ``recheck`` seconds at most; a script adding a message
due earlier than every pending one PUBLISHes its due time (``schedule``), which wakes
the thread to move it at that time. Moves stay at least ``interval`` apart, so a busy
publisher costs each worker no more than one move per interval, and a due message
reaches the queue within ``interval`` of its time. A notification can only be missed
while the subscription is down: it is taken again after any disconnect (redis-py's
reconnect included), and every (re)subscription is followed by a move; a connection
that went silent is noticed by a PING every ``recheck`` seconds. Through Sentinel, the
thread also listens to a sentinel's failover announcements (``sentinelconn.FailoverWatch``)
and subscribes on the new primary at once. What adds to the schedule without a
notification (a publisher of an earlier version during a rolling deploy, a hand-made
ZADD) is moved ``recheck`` seconds late at most.
"""

from __future__ import annotations

import math
import os
import select
import time
from typing import Any

import redis

from .. import keys, redisurl, schedule
from ..logtext import get_logger
from ..sentinelconn import FailoverWatch, close_quietly, subscription_socket
from . import appsettings
from .periodic import PeriodicThread, ThreadStep, consumed_queues

log = get_logger(__name__)

BATCH = 500
"""Most messages moved by one script call; a full batch is followed at once by another."""

RECHECK = 10.0
"""Default longest sleep between two moves (EARNEVENTS_SCHEDULER_RECHECK), seconds."""


class SilentSubscriptionError(redis.ConnectionError):
    """Raised when the wake-up subscription did not answer a PING within ``recheck`` seconds."""


class Mover(PeriodicThread):
    """Moves the due messages of ``queues``' schedules when they are due: see the module."""

    what = "delay scheduler"

    def __init__(self, redis_uri: str, queues: list[str], interval: float, recheck: float = RECHECK) -> None:
        super().__init__(interval)
        self.queues = queues
        self.recheck = max(recheck, interval)
        self._client = redisurl.sync_client(redis_uri, socket_timeout=5, socket_connect_timeout=5)
        self._script = self._client.register_script(schedule.MOVE_DUE_SCRIPT)
        self._channels = [keys.scheduled_wake_channel(queue) for queue in queues]
        self._pubsub: Any = None  # redis.client.PubSub, subscribed to the wake channels
        self._failover = FailoverWatch(self._client)  # Sentinel: a new primary means subscribing there
        self._wake_r, self._wake_w = os.pipe()  # stop() writes here to end a sleep at once
        os.set_blocking(self._wake_w, False)
        self._last_move = -math.inf  # monotonic time of the last move
        self._next_move = 0.0  # monotonic time the next move is due (sooner if a notification says so)
        self._offset = 0.0  # Redis' unix time minus our monotonic time, as of the last move
        self._ping_at = 0.0  # monotonic time of the next PING on the subscription
        self._pinged = False  # a PING is unanswered
        self._polling = False  # Redis refused SUBSCRIBE (an ACL): read the schedule every interval
        self._woken_by_socket = False  # the last sleep ended on the subscription's socket
        self._idle_wake = False  # ...and the tick after it read nothing there (see _sleep)

    def move_due(self) -> int:
        """Move every due message now; returns how many were moved. Plans the next move for
        the earliest due time left (``recheck`` seconds at most)."""
        moved = 0
        wait = self.recheck
        for queue in self.queues:
            while True:
                script_keys, argv = schedule.move_args(queue, BATCH)
                count, now, head = self._script(keys=script_keys, args=argv)
                moved += int(count)
                if int(count) < BATCH:
                    break
            self._offset = float(now) - time.monotonic()
            if head:
                wait = min(wait, float(head) - float(now))
        self._last_move = time.monotonic()
        self._next_move = self._last_move + max(0.0, wait)
        return moved

    def tick(self) -> None:
        """One round: (re)subscribe if needed, take notifications, move if it is time."""
        if self._failover.switched():
            log.info("%s: Sentinel named a new primary; subscribing and reading the schedule there", self.what)
            self._drop_subscription()
            self._client.connection_pool.disconnect()  # the next command asks the sentinels
        if self._polling:
            self.move_due()
            return
        if self._pubsub is None:
            self._subscribe()
            if self._polling:
                return
        read = self._read_notifications()
        self._idle_wake = self._woken_by_socket and not read
        now = time.monotonic()
        if now >= self._ping_at:
            if self._pinged:
                raise SilentSubscriptionError(f"no answer to a PING on the wake-up subscription in {self.recheck:g}s")
            self._pubsub.ping()
            self._pinged, self._ping_at = True, now + self.recheck
        if now >= self._move_at():
            moved = self.move_due()
            if moved:
                log.debug("delay scheduler enqueued %d due message(s)", moved)

    def _move_at(self) -> float:
        return max(self._next_move, self._last_move + self.interval)

    def _subscribe(self) -> None:
        pubsub = self._client.pubsub()
        try:
            pubsub.subscribe(*self._channels)
            pubsub.ping()  # answered after the subscription's reply: a refused SUBSCRIBE shows first
            deadline = time.monotonic() + 5
            while True:
                reply = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if reply is None and time.monotonic() >= deadline:
                    pubsub.close()
                    raise SilentSubscriptionError("no answer to SUBSCRIBE in 5s")
                if reply is not None and reply["type"] in ("pong", b"pong"):
                    break
        except redis.ResponseError as exc:  # e.g. NOPERM: no wake-ups, so poll as before
            pubsub.close()
            log.warning(
                "%s cannot subscribe to its wake-up channel (%s); reading the schedule every %gs instead",
                self.what,
                exc,
                self.interval,
            )
            self._polling = True
            return
        self._pubsub, self._pinged, self._ping_at = pubsub, False, time.monotonic() + self.recheck
        self._next_move = 0.0  # subscribed (confirmed above): read what may have been missed before

    def _read_notifications(self) -> int:
        read = 0
        while (message := self._pubsub.get_message(timeout=0)) is not None:
            read += 1
            kind = message["type"]
            if kind in ("subscribe", b"subscribe"):
                # A (re)subscription, after redis-py reconnected too: notifications may
                # have been missed while it was down, so move (and learn the next due time) now.
                self._next_move = 0.0
            elif kind in ("pong", b"pong"):
                self._pinged = False
            elif kind in ("message", b"message"):
                try:
                    due = float(message["data"]) - self._offset
                except ValueError:
                    continue
                self._next_move = min(self._next_move, due)
        return read

    def _drop_subscription(self) -> None:
        close_quietly(self._pubsub)
        self._pubsub = None

    def _sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the subscription (or the sentinels' failover news) has
        something to read, or :meth:`stop`."""
        watched = [self._wake_r]
        failover = self._failover.socket()
        if failover is not None:
            watched.append(failover)
        sock = subscription_socket(self._pubsub)
        if sock is not None and not self._idle_wake:
            watched.append(sock)
        elif sock is not None:  # readable, yet nothing to read (a partial reply): no busy loop
            seconds = min(seconds, self.interval)
        self._woken_by_socket = False
        try:
            ready, _, _ = select.select(watched, [], [], max(0.0, seconds))
            if self._wake_r in ready:
                os.read(self._wake_r, 64)
            self._woken_by_socket = sock is not None and sock in ready and self._wake_r not in ready
        except (OSError, ValueError):  # closed under us (stop() gave up waiting): the loop ends or retries
            self._stop.wait(self.interval)

    def on_error(self) -> None:
        self._drop_subscription()

    def pause(self, failing: bool) -> None:
        # A sleep that a notification ends. The wait itself holds no lock (a fork need not wait
        # for it): the reads and writes, and any reconnect with its TLS handshake, happen in
        # tick(), under the fork lock.
        if failing:
            self._sleep(self.interval)
        else:
            self._sleep(min(self._move_at(), self._ping_at) - time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # the pipe is full: the thread is awake anyway
            pass
        super().stop()

    def close(self) -> None:
        self._drop_subscription()
        self._failover.close()
        self._client.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class SchedulerStep(ThreadStep):
    """Celery worker bootstep owning one :class:`Mover`."""

    label = "earnevents scheduler"

    def create(self, worker: Any) -> Mover:
        queues = consumed_queues(worker)
        settings = appsettings.settings_of(worker.app)
        interval, recheck = settings.scheduler_interval, settings.scheduler_recheck
        log.info(
            "delay scheduler serving %s: due messages moved within %gs, the schedule read every %gs at least",
            ", ".join(queues),
            interval,
            max(recheck, interval),
        )
        return Mover(settings.redis_uri, queues, interval, recheck)
