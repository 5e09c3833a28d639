"""What a side costs besides time (issue 15, targets 7-9): Redis CPU per handled event, and the
worker's CPU and memory, summed over its whole process tree.

Redis CPU is ``used_cpu_sys + used_cpu_user`` from ``INFO cpu`` (the redis-server process:
command execution, its network reads and writes, its own timers), read before and after a
window, less what the same Redis spends with nobody talking to it (its ``hz`` timer,
measured once per server: :func:`redis_idle`). ``INFO commandstats`` gives the breakdown by
command (time inside each command only; a Lua script's time includes the commands it calls,
which are counted again under their own names, so the breakdown is not summed).

The bench's own counter polls during a measured window are few (:func:`wait_until`): every
poll wakes an idle Redis (~15-20 µs of its CPU each), which at a steady 10 ms would add
several µs per event to a side that handles a few hundred events a second.

Worker CPU is psutil's ``cpu_times`` (user + system, and the same for children it reaped) of
the worker command's process and every descendant (Celery's consumer and pool processes,
Dramatiq's and arq's worker processes); memory is their RSS, USS and PSS summed (RSS counts
pages a forked pool shares with its parent once per process; PSS splits them; USS leaves
them out).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import psutil
import redis

from earnevents.testing import WorkerProcess

IDLE_WINDOW_S = 2.0
"""How long :func:`redis_idle` watches an untouched Redis."""

_idle_cpu: dict[str, float] = {}


@dataclass(frozen=True)
class RedisSnapshot:
    cpu_s: float
    commands: dict[str, tuple[int, int]]  # command -> (calls, usec)
    at: float

    def __sub__(self, before: RedisSnapshot) -> RedisDelta:
        commands = {}
        for name, (calls, usec) in self.commands.items():
            calls0, usec0 = before.commands.get(name, (0, 0))
            if calls > calls0:
                commands[name] = (calls - calls0, usec - usec0)
        return RedisDelta(self.cpu_s - before.cpu_s, commands, self.at - before.at)


@dataclass(frozen=True)
class RedisDelta:
    cpu_s: float
    commands: dict[str, tuple[int, int]]
    seconds: float


def redis_snapshot(client: redis.Redis) -> RedisSnapshot:
    """Redis' CPU seconds so far and its per-command counters (``INFO`` itself left out)."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): (int(entry["calls"]), int(entry["usec"]))
        for name, entry in stats.items()
        if name != "cmdstat_info"
    }
    return RedisSnapshot(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), commands, time.perf_counter())


def redis_idle(client: redis.Redis) -> float:
    """CPU seconds per second the Redis at ``client`` spends on its own (measured once per server)."""
    kwargs = client.connection_pool.connection_kwargs
    where = f"{kwargs.get('host')}:{kwargs.get('port')}"
    if where not in _idle_cpu:
        before = redis_snapshot(client)
        time.sleep(IDLE_WINDOW_S)  # the window measured: nothing else talks to this Redis
        delta = redis_snapshot(client) - before
        _idle_cpu[where] = delta.cpu_s / delta.seconds
    return _idle_cpu[where]


def redis_metrics(delta: RedisDelta, idle_per_s: float, events: int) -> dict[str, float]:
    """Redis CPU per event over a window (its idle share left out), and each command's
    ``cmd_us:NAME`` (µs inside the command) and ``cmd_calls:NAME`` per event."""
    events = max(events, 1)
    out = {
        "redis_cpu_us_per_event": max(0.0, delta.cpu_s - idle_per_s * delta.seconds) / events * 1e6,
        "redis_idle_ms_per_s": idle_per_s * 1000,
    }
    for name, (calls, usec) in delta.commands.items():
        out[f"cmd_us:{name}"] = usec / events
        out[f"cmd_calls:{name}"] = calls / events
    return out


def wait_until(read: Callable[[], int], target: int, timeout: float, what: str) -> float:
    """Poll ``read()`` until it reaches ``target``; the time it did (``perf_counter``).

    Every 20 ms until it moves, then sparse while far (every 0.25 s at most), every 10 ms once
    the rate seen so far says the target is less than 0.3 s away: the end is timed about as
    finely as a steady 10 ms poll times it, and the bench's own polls stay a small share of a
    measured Redis window.
    """
    t0 = time.perf_counter()
    v0 = read()
    deadline = t0 + timeout
    while True:
        value, now = read(), time.perf_counter()
        if value >= target:
            return now
        if now > deadline:
            raise TimeoutError(f"{what}: {value} of {target} after {timeout} s")
        if value == v0:  # nothing handled yet: no rate to go by
            time.sleep(0.02)
            continue
        eta = (target - value) * (now - t0) / (value - v0)
        time.sleep(0.01 if eta < 0.3 else min(0.25, eta / 4))


# --- the worker's process tree ------------------------------------------------------------------


def _tree(workers: Iterable[WorkerProcess]) -> Iterator[psutil.Process]:
    for worker in workers:
        assert worker.proc is not None
        with suppress(psutil.NoSuchProcess):
            root = psutil.Process(worker.proc.pid)
            yield root
            yield from root.children(recursive=True)


def tree_cpu(workers: Iterable[WorkerProcess]) -> dict[int, float]:
    """CPU seconds (user + system, with reaped children's) of every process in the trees, by pid."""
    out = {}
    for proc in _tree(workers):
        with suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system + t.children_user + t.children_system
    return out


def cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the trees used between two :func:`tree_cpu` readings (a process that
    started in between counts whole)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def tree_memory(workers: Iterable[WorkerProcess]) -> dict[str, float]:
    """RSS, USS and PSS of every process in the trees, summed, in MiB; and how many processes."""
    rss = uss = pss = 0
    procs = 0
    for proc in _tree(workers):
        with suppress(psutil.NoSuchProcess):
            info = proc.memory_full_info()
            rss, uss, pss, procs = rss + info.rss, uss + info.uss, pss + info.pss, procs + 1
    mib = 2**20
    return {"worker_rss_mb": rss / mib, "worker_uss_mb": uss / mib, "worker_pss_mb": pss / mib, "worker_procs": procs}


# --- competition for the cores --------------------------------------------------------------------


@contextmanager
def busy_core(core: int = 0) -> Iterator[int]:
    """A CPU-bound Python loop pinned to ``core`` for the length of the block; its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    try:
        psutil.Process(proc.pid).cpu_affinity([core])
        yield proc.pid
    finally:
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
