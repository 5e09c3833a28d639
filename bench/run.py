"""`make bench`: earnevents side by side with plain Celery 5 on the same redis-server.

Every figure runs for both sides in each round, alternating which goes first
(A B, then B A, ...), for at least 3 rounds; the table shows median, min and max,
and the earnevents/Celery ratio taken within each round. Raw results go to
bench/results/latest.json, the table to bench/results/summary.json.

    python -m bench.run [--quick] [--rounds N] [--only 1,4]
    python -m bench.run --only 4L     # the event log's cost: fig 4 with it on, as a ratio to off
    python -m bench.run --only 9,10   # workflows (bench/workflow_figures.py), on the MongoDB stand-in
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from earnevents.testing import MongoServer, RedisServer

from . import delayed_memory, figures, workflow_figures

RESULTS = Path(__file__).parent / "results"
SIDES = ("earnevents", "celery")
PACK = 100
"""Events per message where a figure packs them (publish_batch(events_per_message=PACK))."""


@dataclass(frozen=True)
class Figure:
    number: str
    title: str
    run: Callable[[str, str], dict[str, float]]  # (side, redis_url) -> metrics
    metrics: tuple[tuple[str, str, str], ...]  # (metric, better: "higher"|"lower", target text)
    mongo: bool = False  # runs on the MongoDB stand-in (nx-27017), started only when such a figure is selected


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n1": 300, "n2": 500, "n3": 2000, "n4": 2000, "n5": 3000, "n5a": 300, "lat_s": 3, "n7": 5000,
            "io_threads": 100, "wf_n": 100, "wf_signals": 50, "wf_rate": 20,
        }  # fmt: skip
    return {
        "n1": 3000, "n2": 5000, "n3": 20000, "n4": 20000, "n5": 20000, "n5a": 2000, "lat_s": 20, "n7": 100_000,
        "io_threads": 100, "wf_n": 1000, "wf_signals": 200, "wf_rate": 20,
    }  # fmt: skip


def build(size: dict[str, Any], servers: dict[str, str] | None = None) -> list[Figure]:
    """The figures; ``servers["mongo"]`` is the MongoDB URL of the workflow figures (set before they run)."""
    mongo = servers if servers is not None else {}

    def fig5(side: str, url: str) -> dict[str, float]:
        # Same pool on both sides (prefork, 2 processes); earnevents packs 100 events per
        # message, so each process runs 100 async handlers at once.
        # Celery gets a tenth of the events: at ~180/s it would take two minutes a round.
        n = size["n5"] if side == "earnevents" else size["n5"] // 10
        return figures.end_to_end(side, url, n, "io", "prefork", 2, per_message=PACK)

    def fig5a(side: str, url: str) -> dict[str, float]:
        if side == "earnevents":  # one event per message: 2 processes x 100 threads sharing a loop
            return figures.end_to_end(side, url, size["n5a"], "io", "threads", size["io_threads"], processes=2)
        return figures.end_to_end(side, url, size["n5a"], "io", "prefork", 2)

    return [
        Figure(
            "1",
            "publish, sequential awaits vs apply_async",
            lambda side, url: figures.publish(side, url, size["n1"], "sequential"),
            (("rate", "higher", ">= 2x"), ("stall_ms", "lower", "earnevents <= 5 ms")),
        ),
        Figure(
            "2",
            "publish, gather of 100 vs run_in_executor",
            lambda side, url: figures.publish(side, url, size["n2"], "gather"),
            (("rate", "higher", ">= 5x"),),
        ),
        Figure(
            "3",
            "publish_batch of 100 vs apply_async",
            lambda side, url: figures.publish(side, url, size["n3"], "batch" if side == "earnevents" else "sequential"),
            (("rate", "higher", ">= 10x"),),
        ),
        Figure(
            "4",
            "end to end, trivial handler, prefork -c 2",
            lambda side, url: figures.end_to_end(side, url, size["n4"]),
            (
                ("rate", "higher", ">= 1.0x"),
                ("startup_s", "lower", "report"),
                ("redis_bytes_per_job", "lower", "report"),
                ("redis_keys_per_job", "lower", "report"),
            ),
        ),
        Figure(
            "4L",
            "end to end as fig 4, earnevents with the event log on (earnevents column) vs off (Celery column)",
            lambda side, url: figures.end_to_end("earnevents", url, size["n4"], event_log=side == "earnevents"),
            (("rate", "higher", ">= 0.7x"),),
        ),
        Figure(
            "4b",
            f"end to end, trivial handler, prefork -c 2, {PACK} events per message",
            lambda side, url: figures.end_to_end(side, url, size["n4"], per_message=PACK),
            (("rate", "higher", "report"),),
        ),
        Figure(
            "5",
            f"I/O-bound handlers (10 ms wait), prefork -c 2, {PACK} events per message",
            fig5,
            (("rate", "higher", ">= 20x"),),
        ),
        Figure(
            "5a",
            "I/O-bound handlers, one event per message, 2 x threads -c 100",
            fig5a,
            (("rate", "higher", "report"),),
        ),
        Figure(
            "6",
            "latency publish -> handler start at 200/s",
            lambda side, url: figures.latency(side, url, 200, size["lat_s"]),
            (("p50_ms", "lower", "<= Celery"), ("p95_ms", "lower", "<= Celery"), ("p99_ms", "lower", "<= Celery")),
        ),
        Figure(
            "9",
            f"workflow of 5 goto steps, runs persisted in MongoDB (stand-in), vs chains of 5 tasks, prefork -c 2, "
            f"{size['wf_n']} runs",
            lambda side, url: workflow_figures.throughput(side, url, mongo["mongo"], size["wf_n"]),
            (
                ("steps_per_s", "higher", "report"),
                ("runs_per_s", "higher", "report"),
                ("start_per_s", "higher", "report"),
            ),
            mongo=True,
        ),
        Figure(
            "10",
            f"signal -> next step start at {size['wf_rate']}/s (Celery: plain task publish -> start, a reference)",
            lambda side, url: workflow_figures.signal_latency(
                side, url, mongo["mongo"], size["wf_signals"], size["wf_rate"]
            ),
            (("p50_ms", "lower", "report"), ("p95_ms", "lower", "report"), ("p99_ms", "lower", "report")),
            mongo=True,
        ),
    ]


def ratio(ee: float, celery: float) -> float:
    return ee / celery if celery else float("inf")


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every figure once, small N (a smoke check)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated figure numbers, e.g. 1,4,7")
    parser.add_argument("--json", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    size = sizes(args.quick)
    servers: dict[str, str] = {}
    figs = [f for f in build(size, servers) if not only or f.number in only]
    raw: dict[str, Any] = {"rounds": [], "sizes": size}
    started = time.monotonic()

    with ExitStack() as stack:
        plain = stack.enter_context(RedisServer())
        durable = stack.enter_context(RedisServer(appendonly=True))
        if any(fig.mongo for fig in figs):
            servers["mongo"] = stack.enter_context(MongoServer()).url
        for r in range(rounds):
            order = SIDES if r % 2 == 0 else SIDES[::-1]
            this_round: dict[str, Any] = {}
            for fig in figs:
                this_round[fig.number] = {side: fig.run(side, plain.url) for side in order}
                print(f"round {r + 1} fig {fig.number}: {this_round[fig.number]}", flush=True)
            if not only or "8" in only:
                for number in ("1", "4"):
                    fig = next(f for f in build(size) if f.number == number)
                    this_round[f"8.{number}"] = {side: fig.run(side, durable.url) for side in order}
                    if number not in this_round:
                        this_round[number] = {side: fig.run(side, plain.url) for side in order}
                    print(f"round {r + 1} fig 8.{number} (appendonly): {this_round[f'8.{number}']}", flush=True)
            raw["rounds"].append(this_round)
        if not only or "7" in only:
            n7 = size["n7"]
            ee = delayed_memory.measure_earnevents(plain.url, n7)
            ce = delayed_memory.measure_celery(plain.url, n7)
            raw["memory"] = {"events": n7, "earnevents_mb": ee, "celery_mb": ce}

    rows = table(raw, figs)
    env = {
        "date": dt.date.today().isoformat(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis-py": version("redis"),
        "earnevents": version("earnevents"),
        "rounds": rounds,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started),
    }
    RESULTS.mkdir(exist_ok=True)
    Path(args.json).write_text(json.dumps({"env": env, **raw}, indent=1, default=str))
    (RESULTS / "summary.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    print_table(env, rows)
    return 0


def table(raw: dict[str, Any], figs: list[Figure]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for fig in figs:
        for metric, better, target in fig.metrics:
            ee = [rnd[fig.number]["earnevents"][metric] for rnd in raw["rounds"]]
            ce = [rnd[fig.number]["celery"][metric] for rnd in raw["rounds"]]
            ratios = [ratio(a, b) for a, b in zip(ee, ce, strict=True)]
            rows.append(
                {
                    "fig": fig.number,
                    "title": fig.title,
                    "metric": metric,
                    "better": better,
                    "earnevents": summarize(ee),
                    "celery": summarize(ce),
                    "ratio": summarize(ratios),
                    "target": target,
                    "met": met(metric, target, ee, ratios),
                }
            )
    for number in ("1", "4"):
        key = f"8.{number}"
        if raw["rounds"] and key in raw["rounds"][0]:
            for side in ("earnevents", "celery"):
                ratios = [rnd[key][side]["rate"] / rnd[number][side]["rate"] for rnd in raw["rounds"]]
                rows.append(
                    {
                        "fig": key,
                        "title": f"appendonly everysec / off, fig {number}, {side}",
                        "metric": "rate",
                        "better": "higher",
                        "earnevents": None,
                        "celery": None,
                        "ratio": summarize(ratios),
                        "target": "report",
                        "met": None,
                    }
                )
    memory = raw.get("memory")
    if memory:
        ee_growth = memory["earnevents_mb"][1] - memory["earnevents_mb"][0]
        ce_growth = memory["celery_mb"][1] - memory["celery_mb"][0]
        rows.append(
            {
                "fig": "7",
                "title": f"worker RSS growth, {memory['events']} pending delayed events",
                "metric": "growth_mb",
                "better": "lower",
                "earnevents": summarize([ee_growth]),
                "celery": summarize([ce_growth]),
                "ratio": None,
                "target": "earnevents < 20 MB",
                "met": ee_growth < 20,
            }
        )
    return rows


def met(metric: str, target: str, ee: list[float], ratios: list[float]) -> bool | None:
    median = statistics.median(ratios)
    if target.startswith(">="):
        return median >= float(target[3:].rstrip("x"))
    if target == "<= Celery":
        return median <= 1.0
    if target == "earnevents <= 5 ms":
        return statistics.median(ee) <= 5
    return None


def fmt(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "-"
    return f"{stats['median']:.4g} [{stats['min']:.4g}-{stats['max']:.4g}]"


def print_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(
        f"\nearnevents {env['earnevents']} vs Celery {env['celery']} (kombu {env['kombu']}), "
        f"{env['date']}, {env['cores']} cores, Python {env['python']}, {env['rounds']} round(s), {env['seconds']} s"
    )
    print(
        "| fig | what | metric | earnevents median [min-max] | Celery median [min-max] "
        "| ratio ee/Celery | target | met |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        met_text = {True: "yes", False: "**no**", None: ""}[row["met"]]
        print(
            f"| {row['fig']} | {row['title']} | {row['metric']} | {fmt(row['earnevents'])} | {fmt(row['celery'])} "
            f"| {fmt(row['ratio'])} | {row['target']} | {met_text} |"
        )


if __name__ == "__main__":
    sys.exit(main())
