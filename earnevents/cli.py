"""``earnevents`` command line: look at, retry and remove failed jobs; look at and
remove dead letters (queue items workers refused); look at and replay logged events.

    earnevents status [--json] [--watch [SECONDS]]
    earnevents publish NAME [--data JSON] [--delay SECONDS | --at ISO] [--sender S]
    earnevents failed list [FILTERS] [--limit N] [--offset N] [--json]
    earnevents failed show JOB_ID
    earnevents failed retry (JOB_ID [JOB_ID ...] | --all [FILTERS]) [--yes]
    earnevents failed remove (JOB_ID [JOB_ID ...] | --all [FILTERS]) [--yes]
    earnevents failed purge [--older-than 7d] [FILTERS] [--yes]
    earnevents dead list [--limit N] [--offset N] [--json]
    earnevents dead show ID
    earnevents dead remove (ID [ID ...] | --all) [--yes]
    earnevents events [--json]
    earnevents events list [--name NAME] [--status STATUS] [--sender S] [--since 1h] [--limit N] [--offset N] [--json]
    earnevents events show EVENT_ID
    earnevents events replay EVENT_ID [--handler DOTTED ...] [--yes]
    earnevents scheduled list [--event NAME] [--limit N] [--offset N] [--json]
    earnevents scheduled cancel (ID [ID ...] | --all [--event NAME]) [--yes]
    earnevents scheduled rebuild [--since DURATION] [--yes]
    earnevents workflows list [--workflow NAME] [--status STATUS] [--limit N] [--offset N] [--json]
    earnevents workflows show RUN_ID [--json]
    earnevents workflows cancel RUN_ID [--yes]
    earnevents workflows resume RUN_ID [--at-step STEP] [--yes]
    earnevents workflows signal NAME [--payload JSON] [--run RUN_ID]
    earnevents dashboard [--host 127.0.0.1] [--port 8787] [--read-only]

FILTERS are --event NAME, --handler DOTTED, --error TEXT (a substring of the error),
--since WHEN and --until WHEN (WHEN: a duration ago, 90s/1h/7d, or an ISO time; a time
without a zone is UTC). ``failed retry|remove --all`` take every job the filters match
(all of the queue's without one), ``dead remove --all`` every dead item, ``scheduled
cancel --all`` everything waiting (only --event's, alias --name, if given): the ids read
first, a confirmation that shows their count, then batches of 500 with progress on stderr
(a bar on a terminal, a ``remove: 500/1234`` line per batch otherwise), then one line
saying how many were done and how many were gone already (handled by someone else
meanwhile: not an error). ``failed purge`` given --error, --since or --until does the
same as ``failed remove --all`` (its --older-than then narrows --until).

``earnevents status`` prints the configured queue's counts: waiting, in flight,
scheduled, failed, dead-lettered, and its live workers; ``--watch`` reads them again
every SECONDS (2) until interrupted: on a terminal one table redrawn in place, otherwise
(or with --json) a line each time. ``earnevents publish`` publishes one event as
``event_bus.publish`` does (validated against its ``define_event`` schema: it imports
the application's modules as ``earnevents events`` does) and prints its id.

``earnevents events`` lists the event registry: every ``define_event`` with its
description, schema, codes and metadata, and the handlers and receivers subscribed
to it. It imports the application's modules to know them (EARNEVENTS_HANDLER_MODULES
and EARNEVENTS_AUTODISCOVER, from the current directory as Celery does) and needs
neither Redis nor MongoDB. ``earnevents events list|show|replay`` work on the event
log (see ``event_bus.get_event``).

``earnevents scheduled list|cancel`` look at and withdraw what waits in the delay
schedule: delayed events, handler retries and models' scheduled occurrences
(``EventDefinition(date_field=...)``), the document each is for shown as its entity.
``earnevents scheduled rebuild`` recreates models' pending occurrences from MongoDB
(after Redis lost its data, or writes that bypassed the models): it imports the
application's modules as ``earnevents events`` does, and needs MongoDB. When no
imported model declares a scheduled event it has nothing to do and says so, with
exit status 1: the likely cause is that the application's modules were not found.

``earnevents workflows`` looks at workflow runs (MongoDB, needed), cancels and resumes
them and sends signals. ``resume`` and ``signal`` import the application's modules as
``earnevents events`` does: they need the workflows' definitions (the steps, the Context).

``earnevents dashboard`` serves the web dashboard (``earnevents.dashboard``) until
interrupted. It refuses (exit 2) a --host that is not a loopback address unless
EARNEVENTS_DASHBOARD_TOKEN is set (then every request needs that token) or --read-only.

``failed list``, ``dead list``, ``scheduled list`` and ``status`` print rich tables when
stdout is a terminal, plain lines otherwise (one JSON object per line with --json).

Connection settings come from EARNEVENTS_* variables, like the worker's, or from
--redis-uri / --mongo-uri / --database. Commands that delete records or run
handlers again (retry, remove, purge, replay, cancel, rebuild --since, workflows cancel|resume)
ask for confirmation on a terminal; with stdin not a terminal they refuse (exit 2) unless given --yes.

Exit status: see :data:`EXIT_STATUS`, the table ``earnevents --help`` ends with.
Errors are one ``error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import importlib
import json
import math
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import redis.exceptions as redis_errors

from . import bulk, discovery, mongoerrors, runtime
from .bus import event_bus
from .cliprogress import BatchProgress
from .clitable import live_table, on_terminal, print_table
from .config import Settings
from .deadletters import DeadItem
from .definitions import RegistryEntry, Subscriber
from .definitions import registry as event_registry
from .errors import ConfigError, DeadItemNotFoundError, EarnEventsError, JobNotFoundError, NotInitializedError
from .event import Event, encode
from .eventlog import EVENT_STATUSES, EventRecord
from .failures import FailedJob
from .failures.selection import JobSelection
from .logtext import escape
from .models import automations
from .moments import parse_duration, parse_moment
from .queuestatus import dead_ids, queue_status, scheduled_ids
from .redact import redact_uri
from .schedule import ScheduledEvent
from .workflows import engine as workflow_engine
from .workflows.runs import STATUSES as RUN_STATUSES
from .workflows.runs import Run, waits_to_start

USAGE = 2
"""Exit status for bad usage or configuration."""
FAILURE = 1
"""Exit status for a runtime error: an unknown id, a server unreachable, a declined confirmation."""
INTERRUPTED = 130
"""Exit status when interrupted (Ctrl-C, SIGINT): 128 + the signal's number, as shells report it."""

EXIT_STATUS = f"""\
exit status:
  0    done; also when --all matched nothing, or some items it matched were gone
       (handled by someone else) by the time they were reached
  {FAILURE}    a runtime error: an ID given not found (the others still handled), a
       confirmation declined, Redis or MongoDB unreachable (a publish Redis did
       not take in time too), the application's modules not importable,
       `scheduled rebuild` with nothing to rebuild or documents it could not
       load, a workflow run in no state to cancel or resume, stdout closed
       before all was written (a pipe's reader quit: nothing said); a bulk
       command stopped by an error prints how many items it had done
  {USAGE}    bad usage or configuration: arguments, settings, a --data its event's
       schema refuses, a command that deletes or re-runs without --yes while
       stdin is not a terminal
  {INTERRUPTED}  interrupted (Ctrl-C, at a confirmation's question too): how
       `status --watch` ends; a bulk command prints how many items it had done
"""
"""The exit statuses, as ``earnevents --help`` ends with them."""


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class UsageError(EarnEventsError):
    """Raised for a command that cannot run as given (exit status 2)."""


class Declined(EarnEventsError):
    """Raised when the operator did not confirm a destructive command (exit status 1)."""


def confirm(what: str, yes: bool) -> None:
    """Go on only if ``yes`` (--yes) or the operator answers y on a terminal.

    Without a terminal there is no one to ask: UsageError telling to pass --yes.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{what}: stdin is not a terminal, so nobody can confirm; pass --yes to go ahead")
    try:
        answer = _ask(f"{what}? [y/N] ")
    except KeyboardInterrupt:
        sys.stderr.write("\n")  # the error line on a line of its own, not after the question
        raise
    if answer.strip().lower() not in ("y", "yes"):
        raise Declined("not confirmed; nothing was changed")


def _ask(question: str) -> str:
    """Write ``question`` on stderr and read the answer, a line from stdin; Ctrl-C raises
    KeyboardInterrupt at once, from before the question shows.

    Under ``asyncio.run`` (Python 3.11+) a first SIGINT only cancels the main task, which a
    read blocked in this thread never sees: the question would stay until a second Ctrl-C.
    """
    main = threading.current_thread() is threading.main_thread()  # signal handlers are the main thread's
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        sys.stderr.write(question)
        sys.stderr.flush()
        return sys.stdin.readline()
    finally:
        if previous is not None:  # None also: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, previous)


def _job_dict(job: FailedJob, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": job.id,
        "event": job.event.name,
        "event_id": job.event.id,
        "handler": job.handler,
        "error": job.error,
        "attempts": job.attempts,
        "failed_at": job.failed_at.isoformat(),
        "queue": job.queue,
    }
    if full:
        out["data"] = encode(job.event.data)
        out["metadata"] = encode(job.event.metadata)
        out["traceback"] = job.traceback
    return out


def _dead_dict(item: DeadItem, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": item.id,
        "queue": item.queue,
        "reason": item.reason,
        "dropped_at": item.dropped_at.isoformat(),
        "size": item.size,
        "task_id": item.task_id,
        "truncated": item.truncated,
    }
    if full:
        out["raw"] = item.raw
    return out


async def _run_dead(args: argparse.Namespace) -> int:
    if args.command == "list":
        items = await event_bus.get_dead_items(args.limit, args.offset)
        if args.json:
            for item in items:
                print(json.dumps(_dead_dict(item)))
        else:
            total = await event_bus.count_dead_items()
            title = f"{total} dead item(s)" + (f", showing {len(items)}" if len(items) < total else "")
            if on_terminal():
                rows = [(i.id, f"{i.dropped_at:%Y-%m-%d %H:%M:%S}", i.size, i.reason) for i in items]
                print_table(title, ("id", "dropped at (UTC)", "bytes", "reason"), rows)
                return 0
            print(title)
            for item in items:
                print(f"{item.id}  {item.dropped_at:%Y-%m-%d %H:%M:%S}  {item.size} bytes  {escape(item.reason)}")
        return 0
    if args.command == "show":
        print(json.dumps(_dead_dict(await event_bus.get_dead_item(args.item_id), full=True), indent=2))
        return 0
    if args.all:
        if args.item_ids:
            raise UsageError("dead remove: give IDs or --all, not both")
        ids = await dead_ids(runtime.current().redis, _queue())
        if not ids:
            print(f"no dead item on queue {_queue()!r}; nothing to do")
            return 0
        confirm(f"remove {len(ids)} dead item record(s) of queue {_queue()!r} (all of them)", args.yes)
        act = _unless_missing(event_bus.remove_dead_item, DeadItemNotFoundError)
        await _in_batches(ids, act, "remove", "removed", "dead item record(s)", "removed meanwhile")
        return 0
    if not args.item_ids:
        raise UsageError("dead remove: give the IDs, or --all for every dead item of the queue")
    confirm(f"remove {len(args.item_ids)} dead item record(s) of queue {_queue()!r}", args.yes)
    status = 0
    for item_id in args.item_ids:
        try:
            await event_bus.remove_dead_item(item_id)
            print(f"removed {item_id}")
        except DeadItemNotFoundError as exc:
            print(f"error: {escape(str(exc))}", file=sys.stderr)
            status = FAILURE
    return status


def _event_dict(record: EventRecord, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "status": record.status,
        "sender": record.sender,
        "published_at": None if record.published_at is None else record.published_at.isoformat(),
        "due_at": None if record.due_at is None else record.due_at.isoformat(),
        "cancelled_at": None if record.cancelled_at is None else record.cancelled_at.isoformat(),
        "replay_of": record.replay_of,
        "queue": record.queue,
        "handlers": {
            name: {
                "status": h.status,
                "attempts": h.attempts,
                "started_at": None if h.started_at is None else h.started_at.isoformat(),
                "finished_at": None if h.finished_at is None else h.finished_at.isoformat(),
                "duration": h.duration,
                "error": h.error,
                **({"traceback": h.traceback} if full else {}),
            }
            for name, h in record.handlers.items()
        },
    }
    if full:
        out["data"] = encode(record.data)
        out["metadata"] = encode(record.metadata)
    return out


async def _run_events(args: argparse.Namespace) -> int:
    """``earnevents events list|show|replay``: the event log."""
    if args.command == "list":
        since = None
        if args.since is not None:
            since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=args.since)
        records = await event_bus.find_events(
            name=args.name, status=args.status, sender=args.sender, since=since, limit=args.limit, offset=args.offset
        )
        if args.json:
            for record in records:
                print(json.dumps(_event_dict(record)))
            return 0
        print(f"{len(records)} event(s)")
        for record in records:
            done = sum(h.status == "succeeded" for h in record.handlers.values())
            when = "-" if record.published_at is None else f"{record.published_at:%Y-%m-%d %H:%M:%S}"
            print(
                f"{escape(record.id)}  {when}  {record.status:<16}  {escape(record.name)}  "
                f"{escape(record.sender or '-')}  {done}/{len(record.handlers)} handler(s) succeeded"
            )
        return 0
    if args.command == "show":
        print(json.dumps(_event_dict(await event_bus.get_event(args.event_id), full=True), indent=2))
        return 0
    if args.command == "replay":
        handlers = args.handlers or None
        record = await event_bus.get_event(args.event_id)
        targets = ", ".join(handlers) if handlers else "all its handlers"
        confirm(f"replay event {record.id} ({record.name}): run {targets} again", args.yes)
        print(f"replayed {record.id} as {await event_bus.replay(record.id, handlers)}")
        return 0
    raise UsageError("give a subcommand: earnevents events list, show or replay")


# --- earnevents scheduled: the delay schedule -----------------------------------------


def _scheduled_dict(item: ScheduledEvent) -> dict[str, Any]:
    entity = item.entity
    return {
        "id": item.id,
        "event": item.event.name,
        "event_id": item.event.id,
        "due_at": item.due_at.isoformat(),
        "handler": item.handler,
        "attempt": item.attempt,
        "entity": None if entity is None else entity.to_dict(),
    }


def _scheduled_line(item: ScheduledEvent) -> str:
    line = f"{escape(item.id)}  {item.due_at:%Y-%m-%d %H:%M:%S}  {escape(item.event.name)}"
    if item.handler is not None:
        line += f"  handler {escape(item.handler)}"
    if item.attempt:
        line += f"  attempt {item.attempt}"
    if item.entity is not None:
        line += f"  entity {escape(item.entity.model)} {escape(item.entity.id)}"
    return line


async def _run_scheduled(args: argparse.Namespace) -> int:
    """``earnevents scheduled list|cancel|rebuild``: the delay schedule."""
    if args.command == "list":
        items = await event_bus.get_scheduled(args.limit, args.offset, args.event)
        if args.json:
            for item in items:
                print(json.dumps(_scheduled_dict(item)))
            return 0
        total = await event_bus.count_scheduled(args.event)
        title = f"{total} scheduled message(s)" + (f", showing {len(items)}" if len(items) < total else "")
        if on_terminal():
            rows = [
                (
                    i.id,
                    f"{i.due_at:%Y-%m-%d %H:%M:%S}",
                    i.event.name,
                    i.handler or "",
                    i.attempt or "",
                    "" if i.entity is None else f"{i.entity.model} {i.entity.id}",
                )
                for i in items
            ]
            print_table(title, ("id", "due at (UTC)", "event", "handler", "attempt", "entity"), rows)
            return 0
        print(title)
        for item in items:
            print(_scheduled_line(item))
        return 0
    if args.command == "cancel":
        if args.all:
            return await _cancel_all(args)
        if not args.ids:
            raise UsageError("scheduled cancel: give the IDs, or --all (with --event) for everything waiting")
        if args.event is not None:
            raise UsageError("scheduled cancel: --event selects messages for --all only; add --all")
        confirm(f"cancel {len(args.ids)} scheduled message(s) of queue {_queue()!r}", args.yes)
        status = 0
        for message_id in args.ids:
            if await event_bus.cancel(message_id):
                print(f"cancelled {escape(message_id)}")
            else:
                print(
                    f"error: nothing scheduled with id {escape(repr(message_id))} (fired or cancelled?)",
                    file=sys.stderr,
                )
                status = FAILURE
        return status
    return await _rebuild(args)


async def _cancel_all(args: argparse.Namespace) -> int:
    """``scheduled cancel --all [--event NAME]``: withdraw everything waiting (that event's), in batches."""
    if args.ids:
        raise UsageError("scheduled cancel: give IDs or --all, not both")
    ids = await scheduled_ids(runtime.current().redis, _queue(), args.event)  # ids first: firing shifts the pages
    which = "all of them" if args.event is None else f"event {escape(repr(args.event))}"
    if not ids:
        print(f"nothing scheduled on queue {_queue()!r} ({which}); nothing to do")
        return 0
    confirm(f"cancel {len(ids)} scheduled message(s) of queue {_queue()!r} ({which})", args.yes)
    await _in_batches(
        ids, event_bus.cancel, "cancel", "cancelled", "scheduled message(s)", "fired or cancelled meanwhile"
    )
    return 0


async def _rebuild(args: argparse.Namespace) -> int:
    env = runtime.current()
    settings = env.settings
    if not settings.mongo_uri:
        raise UsageError(
            "scheduled rebuild reads the models' documents from MongoDB, and none is configured: "
            "set EARNEVENTS_MONGO_URI (and EARNEVENTS_DATABASE) or pass --mongo-uri / --database"
        )
    # What a worker imports; init() above had the CLI import nothing (handler_modules=())
    _import_app_modules(Settings.resolve(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database))
    models = automations.scheduled_models()
    if not models:
        raise NothingToRebuild(
            "no imported model declares a scheduled event (EventDefinition with date_field), so nothing was "
            "rebuilt: do EARNEVENTS_HANDLER_MODULES / EARNEVENTS_AUTODISCOVER name the modules defining the models?"
        )
    if args.since is not None:
        confirm(
            f"recreate the occurrences due in the last {args.since_text} too: they fire at once, "
            "a second time for those that had fired",
            args.yes,
        )
    print(
        f"rebuilding the scheduled events of queue {settings.queue_name!r} from MongoDB "
        f"{redact_uri(settings.mongo_uri)} database {settings.database!r}"
    )
    report = await automations.rebuild(env.redis, env.db, settings.queue_name, models, since=args.since or 0.0)
    unreadable = 0
    for done in report:
        print(
            f"{escape(done.model)}: {done.documents} document(s), {done.scheduled} occurrence(s) pending "
            f"(added where missing, {done.moved} moved to their document's time), {done.skipped} past ones "
            f"not recreated, {done.unreadable} unreadable"
        )
        unreadable += done.unreadable
    if unreadable:
        print(
            f"error: {unreadable} document(s) could not be loaded by their model (or a condition raised on "
            "them); their occurrences were not recreated (the log names them)",
            file=sys.stderr,
        )
        return FAILURE
    return 0


class NothingToRebuild(EarnEventsError):
    """Raised when ``scheduled rebuild`` finds no imported model with a scheduled event (exit status 1)."""


async def _run(args: argparse.Namespace) -> int:
    # No autodiscovery: managing failed jobs and dead letters must not depend on importing the application.
    await runtime.init(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database, autodiscover=())
    try:
        if args.group == "dead":
            return await _run_dead(args)
        if args.group == "events":
            return await _run_events(args)
        if args.group == "scheduled":
            return await _run_scheduled(args)
        if args.group == "workflows":
            return await _run_workflows(args)
        if args.group == "status":
            return await _run_status(args)
        if args.group == "publish":
            return await _run_publish(args)
        return await _run_failed(args)
    finally:
        await runtime.close()


def _queue() -> str:
    return runtime.current().settings.queue_name


# --- earnevents failed: failed jobs --------------------------------------------------


def _moment(text: str) -> dt.datetime:
    """``text`` as a moment: a duration ago (90s, 1h, 7d) or an ISO time (UTC when it names no zone)."""
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _selection(args: argparse.Namespace) -> JobSelection:
    return JobSelection(args.event, args.handler, args.error, args.since, args.until)


def _selection_text(selection: JobSelection) -> str:
    return escape(selection.describe())  # escaped: a name or text may hold control characters


async def _run_failed(args: argparse.Namespace) -> int:
    """``earnevents failed list|show|retry|remove|purge``: failed jobs."""
    if args.command == "list":
        selection = _selection(args)
        jobs = await event_bus.get_failed_jobs(
            args.limit, args.offset, args.event, args.handler, error=args.error, since=args.since, until=args.until
        )
        if args.json:
            for job in jobs:
                print(json.dumps(_job_dict(job)))
            return 0
        total = await event_bus.count_failed_jobs(
            args.event, args.handler, error=args.error, since=args.since, until=args.until
        )
        matching = "" if selection.indexed_only else f" matching {_selection_text(selection)}"
        title = f"{total} failed job(s){matching}" + (f", showing {len(jobs)}" if len(jobs) < total else "")
        if on_terminal():
            rows = [
                (job.id, f"{job.failed_at:%Y-%m-%d %H:%M:%S}", job.event.name, job.handler, job.attempts, job.error)
                for job in jobs
            ]
            print_table(title, ("id", "failed at (UTC)", "event", "handler", "attempts", "error"), rows)
            return 0
        print(title)
        for job in jobs:
            print(
                f"{job.id}  {job.failed_at:%Y-%m-%d %H:%M:%S}  {escape(job.event.name)}  "
                f"{escape(job.handler)}  x{job.attempts}  {escape(job.error)}"
            )
        return 0
    if args.command == "show":
        print(json.dumps(_job_dict(await event_bus.get_failed_job(args.job_id), full=True), indent=2))
        return 0
    if args.command == "purge":
        return await _purge(args)
    filtered = [
        f"--{name}" for name in ("event", "handler", "error", "since", "until") if getattr(args, name) is not None
    ]
    if args.all and args.job_ids:
        raise UsageError(f"failed {args.command}: give JOB_IDs or --all, not both")
    if args.all:
        return await _bulk(args)
    if not args.job_ids:
        raise UsageError(f"failed {args.command}: give the JOB_IDs, or --all (with filters) for every job matching")
    if filtered:
        raise UsageError(f"failed {args.command}: {', '.join(filtered)} select jobs for --all only; add --all")
    if args.command == "retry":
        confirm(f"retry {len(args.job_ids)} failed job(s): run their handlers again", args.yes)
    else:
        confirm(f"remove {len(args.job_ids)} failed job(s) for good", args.yes)
    status = 0
    for job_id in args.job_ids:
        try:
            if args.command == "retry":
                await event_bus.retry_job(job_id)
                print(f"retried {job_id}")
            else:
                await event_bus.remove_job(job_id)
                print(f"removed {job_id}")
        except JobNotFoundError as exc:
            print(f"error: {escape(str(exc))}", file=sys.stderr)
            status = FAILURE
    return status


BATCH = 500
"""Items retried, removed or cancelled per batch (one plain progress line each) by the
``--all`` commands: ``failed retry|remove``, ``dead remove``, ``scheduled cancel``."""
CONCURRENCY = 32
"""Of a batch, items acted on at the same time (each a few Redis round trips)."""


def _unless_missing(act: Callable[[str], Awaitable[Any]], missing: type[Exception]) -> Callable[[str], Awaitable[bool]]:
    """``act`` as :func:`_in_batches` takes it: True when done, False when ``missing`` says the item was gone."""

    async def run(item_id: str) -> bool:
        try:
            await act(item_id)
        except missing:
            return False
        return True

    return run


async def _in_batches(
    ids: Sequence[str], act: Callable[[str], Awaitable[bool]], verb: str, past: str, noun: str, gone_why: str
) -> None:
    """Run ``act`` on each of ``ids``, BATCH at a time (CONCURRENCY of a batch at once), with
    progress on stderr (``cliprogress``), then print what was done: ``{past} N {noun}``.

    ``act`` returns False for an item gone since the ids were read (``gone_why`` says how): counted,
    not an error. Another exception stops it after the batch it happened in: it prints how many
    were done (``stopped by an error: ...``) and raises it. An interruption (Ctrl-C) stops it at
    once, printing ``interrupted: ...`` the same way."""
    gate = asyncio.Semaphore(CONCURRENCY)
    done = gone = 0

    def summary(of: str = "") -> str:
        return f"{past} {done}{of} {noun}" + (f"; {gone} were gone already ({gone_why})" if gone else "")

    async def one(item_id: str) -> None:
        nonlocal done, gone
        async with gate:
            if await act(item_id):
                done += 1
            else:
                gone += 1
        progress.advance()

    with BatchProgress(verb, len(ids)) as progress:
        try:
            for start in range(0, len(ids), BATCH):
                results = await asyncio.gather(*(one(i) for i in ids[start : start + BATCH]), return_exceptions=True)
                progress.batch_done()
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
        except (asyncio.CancelledError, KeyboardInterrupt):
            print(f"interrupted: {summary(f' of {len(ids)}')}", flush=True)
            raise
        except Exception:
            print(f"stopped by an error: {summary(f' of {len(ids)}')}", flush=True)
            raise
    print(summary())


async def _bulk(args: argparse.Namespace) -> int:
    """``failed retry|remove --all``: every job the filters match, in batches, with progress."""
    selection = _selection(args)
    ids = await bulk.matching_ids(selection)  # ids first: acting shifts the pages
    if not ids:
        print(f"no failed job matches ({_selection_text(selection)}); nothing to do")
        return 0
    verb: bulk.Action = "retry" if args.command == "retry" else "remove"
    what = "run their handlers again" if verb == "retry" else "for good"
    confirm(f"{verb} {len(ids)} failed job(s) of queue {_queue()!r} ({_selection_text(selection)}): {what}", args.yes)
    act = bulk.act_for(verb)
    past = "retried" if verb == "retry" else "removed"
    await _in_batches(
        ids, _unless_missing(act, JobNotFoundError), verb, past, "failed job(s)", "retried or removed meanwhile"
    )
    return 0


# --- earnevents status and publish ----------------------------------------------------


async def _status() -> dict[str, Any]:
    return dataclasses.asdict(await queue_status())


def _status_text(status: dict[str, Any]) -> str:
    return (
        f"queue {escape(status['queue'])}: {status['waiting']} waiting, {status['in_flight']} in flight, "
        f"{status['scheduled']} scheduled, {status['failed']} failed, {status['dead']} dead-lettered; "
        f"{status['workers']} live worker(s)"
    )


_STATUS_COLUMNS = (
    ("queue", "queue"),
    ("waiting", "waiting"),
    ("in flight", "in_flight"),
    ("scheduled", "scheduled"),
    ("failed", "failed"),
    ("dead-lettered", "dead"),
    ("live workers", "workers"),
)


def _status_row(status: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(status[field] for _, field in _STATUS_COLUMNS)


def _now_title(note: str = "") -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC{note}"


async def _run_status(args: argparse.Namespace) -> int:
    """``earnevents status [--json] [--watch [SECONDS]]``."""
    if args.watch is not None and not args.json and on_terminal():
        await _watch_in_place(args.watch)
    headers = [header for header, _ in _STATUS_COLUMNS]
    while True:
        status = await _status()
        if args.json:
            print(json.dumps({"at": dt.datetime.now(dt.timezone.utc).isoformat(), **status}), flush=True)
        elif on_terminal():
            print_table(_now_title(), headers, [_status_row(status)])
        else:
            print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S}  {_status_text(status)}", flush=True)
        if args.watch is None:
            return 0
        await asyncio.sleep(args.watch)


async def _watch_in_place(every: float) -> NoReturn:
    """``status --watch`` on a terminal: one table, redrawn in place every ``every`` s until
    interrupted (the interruption goes through: exit status 130, the last table left on screen)."""
    note = f", every {every:g}s (Ctrl-C to stop)"
    headers = [header for header, _ in _STATUS_COLUMNS]
    with live_table() as draw:
        while True:
            draw(_now_title(note), headers, [_status_row(await _status())])
            await asyncio.sleep(every)


def _data_arg(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(data).__name__}")
    return cast(dict[str, Any], data)


def _delay_arg(text: str) -> float:
    """Seconds: a number, or a duration with a unit (90s, 5m)."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return seconds


def _at_arg(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time (e.g. 2026-11-27T09:00:00Z)") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} names no time zone: add one (Z, +01:00)")
    return moment


async def _run_publish(args: argparse.Namespace) -> int:
    """``earnevents publish NAME``: publish one event as the application would; print its id."""
    # define_event schemas (and strict mode) live in the application's modules: what a worker imports
    _import_app_modules(Settings.resolve(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database))
    event_id = await event_bus.publish(Event(args.name, args.data), delay=args.delay, at=args.at, sender=args.sender)
    print(event_id)
    return 0


async def _purge(args: argparse.Namespace) -> int:
    if args.error is not None or args.since is not None or args.until is not None:
        # Filters the store does not index: remove what they match, as `failed remove --all` does.
        if args.older_than is not None:
            cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=args.older_than)
            args.until = cutoff if args.until is None else min(args.until, cutoff)
        return await _bulk(argparse.Namespace(**{**vars(args), "command": "remove"}))
    what = f"delete the failed jobs of queue {_queue()!r}"
    if args.older_than is not None:
        what += f" that failed more than {args.older_than_text} ago"
    if args.event is not None:
        what += f", event {args.event!r}"
    if args.handler is not None:
        what += f", handler {args.handler!r}"
    confirm(
        what + " (all of them)" if args.older_than is None and args.event is None and args.handler is None else what,
        args.yes,
    )
    purged = await event_bus.purge_failed_jobs(args.older_than, args.event, args.handler)
    print(f"purged {purged} failed job(s)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``error: ...`` line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(USAGE)


class _Duration(argparse.Action):
    """Keeps the duration in seconds and as typed (for the confirmation question)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        try:
            setattr(namespace, self.dest, parse_duration(values))
        except ValueError as exc:
            parser.error(f"argument {option_string}: {exc}")
        setattr(namespace, self.dest + "_text", values)


def _add_yes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", "-y", action="store_true", help="do it without asking (needed when not on a terminal)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--event", help="only this event name")
    parser.add_argument("--handler", help="only this handler (dotted name)")
    parser.add_argument("--error", metavar="TEXT", help="only jobs whose error contains TEXT")
    when = "a duration ago (90s, 1h, 7d) or an ISO time (UTC unless it names a zone)"
    parser.add_argument("--since", type=_moment, metavar="WHEN", help=f"only jobs that failed since: {when}")
    parser.add_argument("--until", type=_moment, metavar="WHEN", help=f"only jobs that failed until: {when}")


def _add_status_publish(groups: Any) -> None:
    status = groups.add_parser(
        "status",
        help="the queue's counts and live workers",
        description="The configured queue: waiting, in flight, scheduled, failed, dead-lettered, live workers.",
    )
    status.add_argument("--json", action="store_true", help="one JSON object per line")
    status.add_argument(
        "--watch",
        type=_delay_arg,
        nargs="?",
        const=2.0,
        metavar="SECONDS",
        help="print again every SECONDS (2) until interrupted",
    )
    publish = groups.add_parser(
        "publish",
        help="publish an event; prints its id",
        description="Publish one event as event_bus.publish does (validated against its schema; the application's "
        "modules are imported, as a worker does) and print its id.",
    )
    publish.add_argument("name", metavar="NAME")
    publish.add_argument("--data", type=_data_arg, default={}, metavar="JSON", help="the event's data, a JSON object")
    when = publish.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_delay_arg, metavar="SECONDS", help="no handler starts before (30, 90s, 5m)")
    when.add_argument("--at", type=_at_arg, metavar="ISO", help="no handler starts before this time, with its zone")
    publish.add_argument("--sender", metavar="S", help="the event's sender (metadata['sender'])")


def _add_event_log(parser: argparse.ArgumentParser) -> None:
    """``earnevents events list|show|replay``: the event log's subcommands of the ``events`` group
    (optional: without one, the group prints the registry)."""
    events = parser.add_subparsers(dest="command", required=False)
    lst = events.add_parser("list", help="logged events, newest first")
    lst.add_argument("--name", help="only this event name")
    lst.add_argument("--status", choices=EVENT_STATUSES, help="only events with this status")
    lst.add_argument("--sender", help="only events from this sender")
    lst.add_argument("--since", action=_Duration, metavar="DURATION", help="only events published within: 90s, 1h, 7d")
    lst.add_argument("--limit", type=_count_arg, default=100)
    lst.add_argument("--offset", type=_count_arg, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(since=None, since_text=None)
    show = events.add_parser("show", help="one event with its data and each handler's outcome, as JSON")
    show.add_argument("event_id", metavar="EVENT_ID")
    replay = events.add_parser("replay", help="publish a copy of the event (a new id) to its handlers again")
    replay.add_argument("event_id", metavar="EVENT_ID")
    replay.add_argument(
        "--handler", dest="handlers", action="append", metavar="DOTTED", help="only this handler (repeatable)"
    )
    _add_yes(replay)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="earnevents",
        description="Failed jobs, dead letters, the event registry, the event log, the delay schedule "
        "and workflow runs.",
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog's table as written
    )
    parser.add_argument("--redis-uri", help="default: $EARNEVENTS_REDIS_URI")
    parser.add_argument("--mongo-uri", help="default: $EARNEVENTS_MONGO_URI (unset: failed jobs live in Redis)")
    parser.add_argument("--database", help="default: $EARNEVENTS_DATABASE")
    groups = parser.add_subparsers(dest="group", required=True)
    _add_status_publish(groups)
    failed = groups.add_parser("failed", help="failed jobs").add_subparsers(dest="command", required=True)
    lst = failed.add_parser("list", help="newest first")
    _add_filters(lst)
    lst.add_argument("--limit", type=_count_arg, default=100)
    lst.add_argument("--offset", type=_count_arg, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = failed.add_parser("show", help="one job with its data and traceback, as JSON")
    show.add_argument("job_id")
    for name, what in (("retry", "re-run the handler now and take the job off the list"), ("remove", "delete the job")):
        sub = failed.add_parser(
            name,
            help=what,
            description=f"{what.capitalize()}: the JOB_IDs given, or with --all every job the filters match "
            f"(all of the queue's without one), {BATCH} at a time, after a confirmation showing the count.",
        )
        sub.add_argument("job_ids", nargs="*", metavar="JOB_ID")
        sub.add_argument("--all", action="store_true", help="every job the filters match instead of JOB_IDs")
        _add_filters(sub)
        _add_yes(sub)
    purge = failed.add_parser("purge", help="delete failed jobs in bulk (all of the queue's unless filtered)")
    purge.add_argument(
        "--older-than", action=_Duration, metavar="DURATION", help="only jobs that failed longer ago: 90s, 30m, 12h, 7d"
    )
    _add_filters(purge)
    purge.set_defaults(older_than=None, older_than_text=None)
    _add_yes(purge)
    dead = groups.add_parser("dead", help="queue items workers refused").add_subparsers(dest="command", required=True)
    lst = dead.add_parser("list", help="newest first")
    lst.add_argument("--limit", type=_count_arg, default=100)
    lst.add_argument("--offset", type=_count_arg, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = dead.add_parser("show", help="one item with its raw text, as JSON")
    show.add_argument("item_id", metavar="ID")
    remove = dead.add_parser(
        "remove",
        help="delete records",
        description="Delete the records of the IDs given (exit status 1 if one was not found), or with --all "
        f"every dead item of the queue, {BATCH} at a time, after a confirmation showing the count.",
    )
    remove.add_argument("item_ids", nargs="*", metavar="ID")
    remove.add_argument("--all", action="store_true", help="every dead item of the queue instead of IDs")
    _add_yes(remove)
    _add_scheduled(groups)
    _add_event_log(_add_events(groups))
    _add_workflows(groups)
    _add_dashboard(groups)
    return parser


def _add_dashboard(groups: Any) -> None:
    dashboard = groups.add_parser(
        "dashboard",
        help="serve the web dashboard",
        description="Serve the web dashboard with uvicorn until interrupted. A --host that is not a loopback "
        "address needs EARNEVENTS_DASHBOARD_TOKEN (every request must then carry it) or --read-only.",
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1)")
    dashboard.add_argument("--port", type=_port_arg, default=8787, help="the port (default: 8787)")
    dashboard.add_argument("--read-only", action="store_true", help="refuse every action (POST); show no buttons")


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return port


def _run_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import serve
    from .dashboard.app import TOKEN_ENV

    token = os.environ.get(TOKEN_ENV) or None
    serve.check_bind(args.host, token, args.read_only)
    settings = Settings.resolve(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database)
    # Workflows' resume and signal need their definitions, event pages the defined events: import
    # what a worker of these settings would, as the `workflows` and `publish` commands do.
    _import_app_modules(settings)
    # The app initializes earnevents in its lifespan, from the environment: hand it the options.
    for name, value in (
        ("EARNEVENTS_REDIS_URI", args.redis_uri),
        ("EARNEVENTS_MONGO_URI", args.mongo_uri),
        ("EARNEVENTS_DATABASE", args.database),
    ):
        if value is not None:
            os.environ[name] = value
    host = f"[{args.host}]" if ":" in args.host else args.host
    banner = (
        f"earnevents dashboard on http://{host}:{args.port}/ (queue {escape(settings.queue_name)}, "
        f"Redis {redact_uri(settings.redis_uri)}" + (", read-only" if args.read_only else "") + ")"
    )
    return serve.serve(args.host, args.port, token, args.read_only, banner)


def _add_scheduled(groups: Any) -> None:
    scheduled = groups.add_parser(
        "scheduled", help="the delay schedule: delayed events, handler retries, models' scheduled events"
    ).add_subparsers(dest="command", required=True)
    what = (
        "What waits in the delay schedule, soonest first: id, due time (UTC), event, handler (a retry's, or a "
        "model occurrence's), attempt (a retry's), entity (the model and document a model's scheduled event is for)."
    )
    lst = scheduled.add_parser("list", help="what waits, soonest first", description=what)
    lst.add_argument("--event", help="only this event name")
    lst.add_argument("--limit", type=_count_arg, default=100)
    lst.add_argument("--offset", type=_count_arg, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    what = (
        "Withdraw scheduled messages by the id `scheduled list` shows (exit status 1 if one was not pending), "
        f"or with --all everything waiting (only --event's with it), {BATCH} at a time, after a confirmation "
        "showing the count. A model's occurrence comes back on its document's next write or a rebuild."
    )
    cancel = scheduled.add_parser("cancel", help="withdraw scheduled messages", description=what)
    cancel.add_argument("ids", nargs="*", metavar="ID")
    cancel.add_argument("--all", action="store_true", help="everything waiting (--event's) instead of IDs")
    cancel.add_argument("--event", "--name", dest="event", metavar="NAME", help="with --all: only this event's")
    _add_yes(cancel)
    what = (
        "Recreate the models' pending scheduled events from their MongoDB documents (after Redis lost its data, "
        "or writes that bypassed the models); occurrences already pending are left as they are. Imports the "
        "application's modules (EARNEVENTS_HANDLER_MODULES, EARNEVENTS_AUTODISCOVER, from the current directory); "
        "needs MongoDB (exit status 2 without). Exit status 1 when no imported model declares a scheduled event, "
        "or a document could not be loaded."
    )
    rebuild = scheduled.add_parser("rebuild", help="recreate models' scheduled events from MongoDB", description=what)
    rebuild.add_argument(
        "--since",
        action=_Duration,
        metavar="DURATION",
        help="also recreate occurrences due within this past window (90s, 1h, 7d): they fire at once, and "
        "those that had fired before Redis lost them are delivered a second time (asks first)",
    )
    rebuild.set_defaults(since=None, since_text=None)
    _add_yes(rebuild)


# --- earnevents workflows: workflow runs ---------------------------------------------


def _add_workflows(groups: Any) -> None:
    workflows = groups.add_parser(
        "workflows", help="workflow runs: list, show, cancel, resume; send signals"
    ).add_subparsers(dest="command", required=True)
    lst = workflows.add_parser(
        "list",
        help="runs, newest first",
        description="Workflow runs, newest first: id, created (UTC), workflow, status, step, wake-up time.",
    )
    lst.add_argument("--workflow", help="only runs of this workflow")
    lst.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    lst.add_argument("--limit", type=_count_arg, default=100)
    lst.add_argument("--offset", type=_count_arg, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = workflows.add_parser("show", help="one run: its state, Context, error and history")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="the run as one JSON document")
    cancel = workflows.add_parser(
        "cancel", help="cancel a run that has not ended (exit status 1 if it had)", description="Cancel a run."
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    _add_yes(cancel)
    what = (
        "Run a failed or cancelled run again, from its step or --at-step (e.g. a step a deploy removed). "
        "Imports the application's modules (EARNEVENTS_HANDLER_MODULES, EARNEVENTS_AUTODISCOVER)."
    )
    resume = workflows.add_parser("resume", help="run a failed or cancelled run again", description=what)
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument("--at-step", metavar="STEP", help="the step to resume at (default: the run's step)")
    _add_yes(resume)
    what = (
        "Wake the runs waiting on wait(NAME) (only RUN_ID with --run), the payload merged into their Context; "
        "prints how many woke. Imports the application's modules, as resume does."
    )
    signal = workflows.add_parser("signal", help="send a signal to waiting runs", description=what)
    signal.add_argument("name", metavar="NAME")
    signal.add_argument("--payload", metavar="JSON", help="a JSON object merged into the Context of the runs woken")
    signal.add_argument("--run", metavar="RUN_ID", help="only this run")


def _time(at: float | None) -> str:
    if at is None:
        return "-"
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _run_line(run: Run) -> str:
    line = f"{escape(run.id)}  {_time(run.created_at)}  {escape(run.workflow)}  {run.status}  {escape(run.step)}"
    if run.wake_at is not None:
        line += f"  {'starts' if waits_to_start(run) else 'wakes'} {_time(run.wake_at)}"
    if run.error:
        line += f"  {escape(run.error)}"
    return line


def _run_text(run: Run) -> list[str]:
    waiting = run.waiting_for
    lines = [
        f"run        {escape(run.id)}",
        f"workflow   {escape(run.workflow)}",
        f"status     {run.status}",
        f"step       {escape(run.step)}",
        f"context    {escape(json.dumps(run.context, sort_keys=True))}",
        f"waiting    {'-' if not waiting else escape(json.dumps(waiting, sort_keys=True))}",
        f"{'starts at' if waits_to_start(run) else 'wake at':<11}{_time(run.wake_at)}",
        f"attempts   {run.attempts}",
        f"created    {_time(run.created_at)}",
        f"updated    {_time(run.updated_at)}",
    ]
    if run.entity:
        lines.append(f"entity     {escape(str(run.entity.get('model')))} {escape(str(run.entity.get('id')))}")
    if run.result is not None:
        lines.append(f"result     {escape(json.dumps(run.result, sort_keys=True))}")
    if run.error:
        lines.append(f"error      {escape(run.error)}")
    if run.traceback:
        lines.append("traceback")
        lines.extend("  " + escape(text) for text in run.traceback.rstrip().splitlines())
    dropped = f" ({run.history_dropped} older line(s) dropped)" if run.history_dropped else ""
    lines.append(f"history{dropped}")
    for entry in run.history:
        details = {key: value for key, value in entry.items() if key not in ("at", "what")}
        text = f"  {_time(entry.get('at'))}  {escape(str(entry.get('what')))}"
        if details:
            text += "  " + escape(json.dumps(details, sort_keys=True, default=str))
        lines.append(text)
    return lines


def _signal_payload(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise UsageError(f"--payload must be a JSON object, got {type(payload).__name__}")
    return payload


async def _run_workflows(args: argparse.Namespace) -> int:
    """``earnevents workflows list|show|cancel|resume|signal``: workflow runs in MongoDB."""
    if not runtime.current().settings.mongo_uri:
        raise UsageError(
            "workflow runs live in MongoDB, and none is configured: "
            "set EARNEVENTS_MONGO_URI (and EARNEVENTS_DATABASE) or pass --mongo-uri / --database"
        )
    if args.command == "list":
        runs = await workflow_engine.find_runs(args.workflow, args.status, None, args.limit, args.offset)
        if args.json:
            for run in runs:
                print(json.dumps(run.to_dict(), default=str))
        else:
            print(f"{len(runs)} run(s)" + (f" from {args.offset}" if args.offset else ""))
            for run in runs:
                print(_run_line(run))
        return 0
    if args.command == "show":
        run = await workflow_engine.get_run(args.run_id)
        if args.json:
            print(json.dumps(run.to_dict(), indent=2, default=str))
        else:
            print("\n".join(_run_text(run)))
        return 0
    if args.command == "cancel":
        run = await workflow_engine.get_run(args.run_id)
        confirm(f"cancel workflow run {escape(run.id)} ({escape(run.workflow)}, {run.status})", args.yes)
        if not await workflow_engine.cancel(run.id):
            current = await workflow_engine.get_run(run.id)
            print(f"error: run {escape(run.id)} is {current.status}: nothing to cancel", file=sys.stderr)
            return FAILURE
        print(f"cancelled {escape(run.id)}")
        return 0
    # resume and signal need the workflows' definitions: what a worker imports
    _import_app_modules(Settings.resolve(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database))
    if args.command == "resume":
        run = await workflow_engine.get_run(args.run_id)
        step = args.at_step or run.step
        what = f"resume workflow run {escape(run.id)} ({escape(run.workflow)}, {run.status}) at step {escape(step)}"
        confirm(what, args.yes)
        await workflow_engine.resume(run.id, at_step=args.at_step)
        print(f"resumed {escape(run.id)} at step {escape(step)}")
        return 0
    woken = await workflow_engine.signal(args.name, _signal_payload(args.payload), run_id=args.run)
    print(f"signal {escape(args.name)} woke {woken} run(s)")
    return 0


# --- earnevents events: the event registry ------------------------------------------


def _add_events(groups: Any) -> argparse.ArgumentParser:
    """The ``events`` group; without a subcommand it prints the registry (subcommands
    may be added to the parser returned)."""
    events = groups.add_parser("events", help="the event registry: definitions, codes, handlers and receivers")
    events.add_argument("--json", action="store_true", help="the registry as one JSON document")
    events.set_defaults(command=None)
    return cast(argparse.ArgumentParser, events)


def _is_registry(args: argparse.Namespace) -> bool:
    return args.group == "events" and getattr(args, "command", None) is None


class ImportFailed(EarnEventsError):
    """Raised when the application's modules could not be imported (exit status 1)."""


def _import_app_modules(settings: Settings) -> None:
    """Import what a worker of these settings would: its handler modules, then autodiscovery."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `celery -A` does: the application is where we run
    try:
        for module in settings.handler_modules:
            importlib.import_module(module)
        discovery.autodiscover(settings.autodiscover)
    except Exception as exc:
        notes = " ".join(getattr(exc, "__notes__", ()))
        raise ImportFailed(
            f"could not import the application's modules (EARNEVENTS_HANDLER_MODULES, EARNEVENTS_AUTODISCOVER): "
            f"{type(exc).__name__}: {exc} {notes}".rstrip()
        ) from exc


def _run_registry(args: argparse.Namespace) -> int:
    settings = Settings.resolve(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database)
    _import_app_modules(settings)
    if args.json:
        print(json.dumps(event_registry.to_dict(), indent=2))
    else:
        print(registry_text())
    return 0


def registry_text() -> str:
    """The registry as the table ``earnevents events`` prints."""
    entries = event_registry.entries()
    patterns = event_registry.patterns()
    defined = sum(1 for entry in entries if entry.definition is not None)
    lines = [
        f"{defined} event(s) defined, {len(entries) - defined} subscribed to without a definition, "
        f"{len(patterns)} pattern subscription(s)"
    ]
    for entry in entries:
        lines.append("")
        lines.extend(_entry_lines(entry))
    for pattern in patterns:
        lines.append("")
        matches = ", ".join(pattern.matches) or "no defined event"
        lines.append(f"{pattern.pattern}  (pattern; matches {matches})")
        lines.extend(_subscriber_lines(pattern.handlers, pattern.receivers, via=False))
    return "\n".join(lines)


def _entry_lines(entry: RegistryEntry) -> list[str]:
    definition = entry.definition
    if definition is None:
        lines = [f"{entry.name}  (not defined)"]
    else:
        lines = [f"{entry.name}  {escape(definition.description)}".rstrip()]
        if definition.schema is not None:
            fields = ", ".join(definition.schema.model_fields)
            lines.append(f"  schema    {definition.schema.__module__}.{definition.schema.__qualname__} ({fields})")
        for code, meta in definition.codes.items():
            described = meta.get("description")
            rest = "  ".join(f"{key}={_shown(value)}" for key, value in meta.items() if key != "description")
            text = f"{code}  {rest}".rstrip() + (f": {escape(described)}" if isinstance(described, str) else "")
            lines.append(f"  code      {text}")
        if definition.metadata:
            shown = "  ".join(f"{key}={_shown(value)}" for key, value in definition.metadata.items())
            lines.append(f"  metadata  {shown}")
    lines.extend(_subscriber_lines(entry.handlers, entry.receivers, via=True))
    if not entry.handlers and not entry.receivers:
        lines.append("  (no handler)")
    return lines


def _subscriber_lines(handlers: Sequence[Subscriber], receivers: Sequence[Subscriber], via: bool) -> list[str]:
    lines = []
    for kind, subscribers in (("handler ", handlers), ("receiver", receivers)):
        for s in subscribers:
            notes = []
            if via and "*" in s.subscription:
                notes.append(f"via {s.subscription}")
            if s.sender is not None:
                notes.append(f"sender {escape(s.sender)}")
            lines.append(f"  {kind}  {s.name}" + (f" ({', '.join(notes)})" if notes else ""))
    return lines


def _shown(value: Any) -> str:
    return escape(value) if isinstance(value, str) else escape(json.dumps(encode(value)))


def _fail(message: str, status: int) -> int:
    print("error: " + escape(" ".join(message.split())), file=sys.stderr)  # one line, whatever the text holds
    return status


def _reader_gone() -> int:
    """stdout's reader quit before all was written: nothing more is said there (or on stderr:
    ``| head`` is not an error to report), exit status 1 as for a cut-off run."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush must not fail
    except (OSError, ValueError):  # stdout not a file (captured in tests)
        pass
    return FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.group == "dashboard":
            return _run_dashboard(args)
        status = _run_registry(args) if _is_registry(args) else asyncio.run(_run(args))
        sys.stdout.flush()  # here, not at exit: a reader gone is then seen below
        return status
    except BrokenPipeError:  # stdout's reader quit (`earnevents failed list | head`): not Redis's doing
        return _reader_gone()
    except (ConfigError, NotInitializedError, UsageError, ValueError, TypeError) as exc:
        return _fail(str(exc), USAGE)
    except EarnEventsError as exc:  # JobNotFoundError, DeadItemNotFoundError, EventNotFoundError, Declined, ...
        return _fail(str(exc), FAILURE)
    except (redis_errors.RedisError, OSError) as exc:
        return _fail(f"Redis: {type(exc).__name__}: {exc} (check EARNEVENTS_REDIS_URI or --redis-uri)", FAILURE)
    except mongoerrors.base() as exc:  # PyMongo is imported only when a MongoDB is used
        return _fail(f"MongoDB: {type(exc).__name__}: {exc} (check EARNEVENTS_MONGO_URI or --mongo-uri)", FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", INTERRUPTED)
    except Exception as exc:  # no traceback for an operator; the type says where to look
        return _fail(f"unexpected {type(exc).__name__}: {exc}", FAILURE)


if __name__ == "__main__":
    sys.exit(main())
