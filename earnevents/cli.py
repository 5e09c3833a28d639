"""``earnevents`` command line: look at, retry and remove failed jobs; look at and
remove dead letters (queue items workers refused).

    earnevents failed list [--event NAME] [--handler DOTTED] [--limit N] [--offset N] [--json]
    earnevents failed show JOB_ID
    earnevents failed retry JOB_ID [JOB_ID ...]
    earnevents failed remove JOB_ID [JOB_ID ...]
    earnevents dead list [--limit N] [--offset N] [--json]
    earnevents dead show ID
    earnevents dead remove ID [ID ...]

Connection settings come from EARNEVENTS_* variables, like the worker's, or from
--redis-uri / --mongo-uri / --database. Exit status: 0 done, 1 an id was not
found (the others were still handled), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import runtime
from .bus import event_bus
from .deadletters import DeadItem
from .errors import DeadItemNotFoundError, EarnEventsError, JobNotFoundError
from .event import encode
from .failures import FailedJob


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
            print(f"{total} dead item(s)" + (f", showing {len(items)}" if len(items) < total else ""))
            for item in items:
                print(f"{item.id}  {item.dropped_at:%Y-%m-%d %H:%M:%S}  {item.size} bytes  {item.reason}")
        return 0
    if args.command == "show":
        print(json.dumps(_dead_dict(await event_bus.get_dead_item(args.item_id), full=True), indent=2))
        return 0
    status = 0
    for item_id in args.item_ids:
        try:
            await event_bus.remove_dead_item(item_id)
            print(f"removed {item_id}")
        except DeadItemNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


async def _run(args: argparse.Namespace) -> int:
    await runtime.init(redis_uri=args.redis_uri, mongo_uri=args.mongo_uri, database=args.database)
    try:
        if args.group == "dead":
            return await _run_dead(args)
        if args.command == "list":
            jobs = await event_bus.get_failed_jobs(args.limit, args.offset, args.event, args.handler)
            if args.json:
                for job in jobs:
                    print(json.dumps(_job_dict(job)))
            else:
                total = await event_bus.count_failed_jobs(args.event, args.handler)
                print(f"{total} failed job(s)" + (f", showing {len(jobs)}" if len(jobs) < total else ""))
                for job in jobs:
                    print(
                        f"{job.id}  {job.failed_at:%Y-%m-%d %H:%M:%S}  {job.event.name}  "
                        f"{job.handler}  x{job.attempts}  {job.error}"
                    )
            return 0
        if args.command == "show":
            print(json.dumps(_job_dict(await event_bus.get_failed_job(args.job_id), full=True), indent=2))
            return 0
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
                print(f"error: {exc}", file=sys.stderr)
                status = 1
        return status
    finally:
        await runtime.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="earnevents", description="Manage earnevents failed jobs and dead letters.")
    parser.add_argument("--redis-uri", help="default: $EARNEVENTS_REDIS_URI")
    parser.add_argument("--mongo-uri", help="default: $EARNEVENTS_MONGO_URI (unset: failed jobs live in Redis)")
    parser.add_argument("--database", help="default: $EARNEVENTS_DATABASE")
    groups = parser.add_subparsers(dest="group", required=True)
    failed = groups.add_parser("failed", help="failed jobs").add_subparsers(dest="command", required=True)
    lst = failed.add_parser("list", help="newest first")
    lst.add_argument("--event", help="only this event name")
    lst.add_argument("--handler", help="only this handler (dotted name)")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--offset", type=int, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = failed.add_parser("show", help="one job with its data and traceback, as JSON")
    show.add_argument("job_id")
    for name, what in (("retry", "re-run the handler now and take the job off the list"), ("remove", "delete the job")):
        sub = failed.add_parser(name, help=what)
        sub.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    dead = groups.add_parser("dead", help="queue items workers refused").add_subparsers(dest="command", required=True)
    lst = dead.add_parser("list", help="newest first")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--offset", type=int, default=0)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = dead.add_parser("show", help="one item with its raw text, as JSON")
    show.add_argument("item_id", metavar="ID")
    remove = dead.add_parser("remove", help="delete the record")
    remove.add_argument("item_ids", nargs="+", metavar="ID")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (JobNotFoundError, DeadItemNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except EarnEventsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
