"""`make bench`: earnevents side by side with plain Celery 5, Dramatiq and arq on the same redis-server.

Every figure runs for every side that has its feature in each round, alternating the order
(A B C D, then D C B A, ...), for at least 3 rounds; the table shows median, min and max,
the earnevents/Celery ratio and the ratio to the best peer (Celery, Dramatiq or arq: the
best value of the round), both taken within each round. A side without the feature shows
"n/a: why". Raw results go to bench/results/latest.json, the table to bench/results/summary.json.

    python -m bench.run [--quick] [--rounds N] [--only 1,4] [--sides earnevents,celery,dramatiq]
    python -m bench.run --only 4L     # the event log's cost: fig 4 with it on, as a ratio to off
    python -m bench.run --only 4,4s   # a plain `def` handler (4s) beside the async one (4)
    python -m bench.run --only 9,10   # workflows (bench/workflow_figures.py), on the MongoDB stand-in
    python -m bench.run --only 4,6,6c,11  # what each side costs (bench/cost.py): Redis CPU per event,
                                          # worker CPU and memory; 6c beside a busy core; 11 idle
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from earnevents.testing import MongoServer, RedisServer

from . import delayed_memory, figures, workflow_figures
from .common import ROOT, arq_python

RESULTS = Path(__file__).parent / "results"
SIDES = ("earnevents", "celery", "dramatiq", "arq")
PEERS = SIDES[1:]
LABELS = {"earnevents": "earnevents", "celery": "Celery", "dramatiq": "Dramatiq", "arq": "arq"}
NO_PACKING = "one job per message"
PACK = 100
"""Events per message where a figure packs them (publish_batch(events_per_message=PACK))."""


@dataclass(frozen=True)
class Figure:
    number: str
    title: str
    run: Callable[[str, str], dict[str, float]]  # (side, redis_url) -> metrics
    metrics: tuple[tuple[str, str, str], ...]  # (metric, better: "higher"|"lower", target text)
    mongo: bool = False  # runs on the MongoDB stand-in (nx-27017), started only when such a figure is selected
    na: dict[str, str] = field(default_factory=dict)  # side -> why it cannot run this figure
    best_peer: bool = True  # False: the Celery column is a stand-in (4L: the event log off; 10: a reference)


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n1": 300, "n2": 500, "n3": 2000, "n4": 2000, "n5": 3000, "n5a": 300, "lat_s": 3, "n7": 5000,
            "idle_s": 3, "io_threads": 100, "wf_n": 100, "wf_signals": 50, "wf_rate": 20,
        }  # fmt: skip
    return {
        "n1": 3000, "n2": 5000, "n3": 20000, "n4": 20000, "n5": 20000, "n5a": 2000, "lat_s": 20, "n7": 100_000,
        "idle_s": 60, "io_threads": 100, "wf_n": 1000, "wf_signals": 200, "wf_rate": 20,
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

    def fig4s(side: str, url: str) -> dict[str, float]:
        # earnevents' plain `def` handler; Celery's and Dramatiq's noop are plain functions already.
        return figures.end_to_end(side, url, size["n4"], "noop_sync" if side == "earnevents" else "noop")

    def fig5a(side: str, url: str) -> dict[str, float]:
        if side == "earnevents":  # one event per message: 2 processes x 100 threads sharing a loop
            return figures.end_to_end(side, url, size["n5a"], "io", "threads", size["io_threads"], processes=2)
        # Celery prefork -c 2; Dramatiq 2 processes x 8 threads; arq 2 processes x 100 jobs
        return figures.end_to_end(side, url, size["n5a"], "io", "prefork", 2)

    def fig4t(side: str, url: str) -> dict[str, float]:
        # Two worker processes each: earnevents and Celery as 2 x `-P threads -c 100` (earnevents'
        # all-async messages then run on each process' loop without a pool thread); Dramatiq
        # and arq as in fig 4 (2 processes x 8 threads, 2 x max_jobs 100).
        if side in ("earnevents", "celery"):
            return figures.end_to_end(side, url, size["n4"], "noop", "threads", size["io_threads"], processes=2)
        return figures.end_to_end(side, url, size["n4"])

    only_ee = {peer: "earnevents' own event log, on vs off" for peer in ("dramatiq", "arq")}

    return [
        Figure(
            "1",
            "publish, sequential awaits vs apply_async (Dramatiq: send; arq: awaited enqueue_job)",
            lambda side, url: figures.publish(side, url, size["n1"], "sequential"),
            (
                ("rate", "higher", ">= 2x"),
                ("stall_ms", "lower", "earnevents <= 5 ms"),
                ("redis_cpu_us_per_event", "lower", "report"),
            ),
        ),
        Figure(
            "2",
            "publish, gather of 100 vs run_in_executor (Dramatiq: send in executor; arq: gather of enqueue_job)",
            lambda side, url: figures.publish(side, url, size["n2"], "gather"),
            (("rate", "higher", ">= 5x"), ("redis_cpu_us_per_event", "lower", "report")),
        ),
        Figure(
            "3",
            "publish_batch of 100 vs apply_async",
            lambda side, url: figures.publish(side, url, size["n3"], "batch" if side == "earnevents" else "sequential"),
            (("rate", "higher", ">= 10x"), ("redis_cpu_us_per_event", "lower", "report")),
            na={
                "dramatiq": "no batch publish (a group sends its messages one by one)",
                "arq": "no batch publish (enqueue_job takes one job)",
            },
        ),
        Figure(
            "4",
            "end to end, trivial handler, prefork -c 2 (Dramatiq 2 processes x 8 threads; arq 2 x max_jobs 100)",
            lambda side, url: figures.end_to_end(side, url, size["n4"]),
            (
                ("rate", "higher", ">= 1.0x"),
                ("startup_s", "lower", "report"),
                ("first_s", "lower", "<= Celery"),
                ("redis_bytes_per_job", "lower", "report"),
                ("redis_keys_per_job", "lower", "report"),
                ("redis_cpu_us_per_event", "lower", "<= Celery"),
                ("worker_cpu_us_per_event", "lower", "report"),
                ("worker_rss_mb", "lower", "<= Celery"),
                ("worker_uss_mb", "lower", "report"),
                ("worker_pss_mb", "lower", "report"),
            ),
        ),
        Figure(
            "4t",
            "end to end, trivial handler, 2 worker processes: earnevents and Celery 2 x threads -c 100 "
            "(Dramatiq 2 processes x 8 threads; arq 2 x max_jobs 100)",
            fig4t,
            (
                ("rate", "higher", ">= best peer"),
                ("first_s", "lower", "report"),
                ("redis_cpu_us_per_event", "lower", "<= Celery"),
                ("worker_cpu_us_per_event", "lower", "report"),
                ("worker_rss_mb", "lower", "<= Celery"),
                ("worker_pss_mb", "lower", "report"),
            ),
        ),
        Figure(
            "4s",
            "end to end as fig 4, earnevents with a plain `def` handler (the same INCR on a blocking client; "
            "the peers' tasks are plain functions already)",
            fig4s,
            (("rate", "higher", ">= 1.0x"),),
            na={"arq": "runs coroutines only (a plain function would need a wrapper of its own)"},
        ),
        Figure(
            "4L",
            "end to end as fig 4, earnevents with the event log on (earnevents column) vs off (Celery column)",
            lambda side, url: figures.end_to_end("earnevents", url, size["n4"], event_log=side == "earnevents"),
            (("rate", "higher", ">= 0.7x"),),
            na=only_ee,
            best_peer=False,
        ),
        Figure(
            "4b",
            f"end to end, trivial handler, prefork -c 2, {PACK} events per message",
            lambda side, url: figures.end_to_end(side, url, size["n4"], per_message=PACK),
            (
                ("rate", "higher", "report"),
                ("redis_cpu_us_per_event", "lower", "report"),
                ("worker_cpu_us_per_event", "lower", "report"),
            ),
            na={peer: f"{NO_PACKING}: see fig 4" for peer in ("dramatiq", "arq")},
        ),
        Figure(
            "5",
            f"I/O-bound handlers (10 ms wait), prefork -c 2, {PACK} events per message",
            fig5,
            (("rate", "higher", ">= 20x"),),
            na={peer: f"{NO_PACKING}: see fig 5a" for peer in ("dramatiq", "arq")},
        ),
        Figure(
            "5a",
            "I/O-bound handlers, one event per message, 2 x threads -c 100 (Celery prefork -c 2; peers as fig 4)",
            fig5a,
            (("rate", "higher", "report"),),
        ),
        Figure(
            "6t",
            "latency publish -> handler start at 200/s, earnevents and Celery -P threads -c 100 "
            "(one process; peers as fig 6)",
            lambda side, url: figures.latency(side, url, 200, size["lat_s"], pool="threads", concurrency=100),
            (
                ("p50_ms", "lower", "<= best peer"),
                ("p95_ms", "lower", "<= best peer"),
                ("p99_ms", "lower", "<= best peer"),
                ("worker_cpu_s", "lower", "<= Celery"),
                ("redis_cpu_us_per_event", "lower", "report"),
            ),
        ),
        Figure(
            "6",
            "latency publish -> handler start at 200/s",
            lambda side, url: figures.latency(side, url, 200, size["lat_s"]),
            (
                ("p50_ms", "lower", "<= Celery"),
                ("p95_ms", "lower", "<= Celery"),
                ("p99_ms", "lower", "<= Celery"),
                ("worker_cpu_s", "lower", "<= Celery"),
                ("redis_cpu_us_per_event", "lower", "report"),
            ),
        ),
        Figure(
            "6c",
            "latency as fig 6 beside a CPU-bound process pinned to core 0",
            lambda side, url: figures.latency(side, url, 200, size["lat_s"], busy=True),
            (
                ("p50_ms", "lower", "report"),
                ("p95_ms", "lower", "report"),
                ("p99_ms", "lower", "<= best peer"),
                ("worker_cpu_s", "lower", "report"),
            ),
        ),
        Figure(
            "11",
            f"idle worker for {size['idle_s']} s after it is ready (empty queue), as fig 4's workers",
            lambda side, url: figures.idle(side, url, size["idle_s"]),
            (
                ("worker_idle_cpu_s", "lower", "<= Celery"),
                ("worker_rss_mb", "lower", "<= Celery"),
                ("worker_uss_mb", "lower", "report"),
                ("worker_pss_mb", "lower", "report"),
                ("redis_idle_cpu_ms_per_s", "lower", "report"),
                ("redis_idle_calls_per_s", "lower", "report"),
            ),
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
            na={
                "dramatiq": "no persisted workflows (its pipelines, like Celery chains, are not measured yet)",
                "arq": "no workflows or chains",
            },
        ),
        Figure(
            "10",
            f"signal -> next step start at {size['wf_rate']}/s (Celery: plain task publish -> start, a reference)",
            lambda side, url: workflow_figures.signal_latency(
                side, url, mongo["mongo"], size["wf_signals"], size["wf_rate"]
            ),
            (("p50_ms", "lower", "report"), ("p95_ms", "lower", "report"), ("p99_ms", "lower", "report")),
            mongo=True,
            na={"dramatiq": "no signals to waiting runs", "arq": "no signals to waiting runs"},
            best_peer=False,
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
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated, of " + ", ".join(SIDES))
    parser.add_argument("--json", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    sides = tuple(side for side in SIDES if side in {x.strip() for x in args.sides.split(",")})
    if "earnevents" not in sides:
        parser.error("--sides must include earnevents (every ratio is earnevents over a peer)")
    if "arq" in sides and not os.access(arq_python(), os.X_OK):
        parser.error(f"no arq interpreter at {arq_python()}: `make bench-venvs` makes .venv-arq (or leave arq out)")
    size = sizes(args.quick)
    servers: dict[str, str] = {}
    figs = [f for f in build(size, servers) if not only or f.number in only]
    raw: dict[str, Any] = {"rounds": [], "sizes": size, "sides": list(sides)}
    # Workers load earnevents and the bench's modules from this checkout, the peers from
    # site-packages, where pip compiled them. Compile ours too (whatever PYTHONDONTWRITEBYTECODE
    # says), or every earnevents worker start would compile ~100 modules from source again.
    for package in ("earnevents", "bench"):
        compileall.compile_dir(str(ROOT / package), quiet=1)
    started = time.monotonic()

    with ExitStack() as stack:
        plain = stack.enter_context(RedisServer())
        durable = stack.enter_context(RedisServer(appendonly=True))
        if any(fig.mongo for fig in figs):
            servers["mongo"] = stack.enter_context(MongoServer()).url
        for r in range(rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            this_round: dict[str, Any] = {}
            for fig in figs:
                this_round[fig.number] = {side: fig.run(side, plain.url) for side in order if side not in fig.na}
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
            raw["memory"] = {"events": n7}
            for side in sides:
                raw["memory"][f"{side}_mb"] = delayed_memory.MEASURE[side](plain.url, n7)
                print(f"fig 7 {side}: RSS before, after {raw['memory'][f'{side}_mb']} MB", flush=True)

    rows = table(raw, figs)
    env = {
        "date": dt.date.today().isoformat(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis-py": version("redis"),
        "dramatiq": version("dramatiq") if "dramatiq" in sides else None,
        "arq": arq_version() if "arq" in sides else None,
        "earnevents": version("earnevents"),
        "sides": list(sides),
        "rounds": rounds,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started),
    }
    RESULTS.mkdir(exist_ok=True)
    Path(args.json).write_text(json.dumps({"env": env, **raw}, indent=1, default=str))
    commands = redis_commands(raw["rounds"])
    (RESULTS / "summary.json").write_text(json.dumps({"env": env, "rows": rows, "redis_commands": commands}, indent=1))
    print_table(env, rows)
    print_commands(commands)
    return 0


def arq_version() -> str:
    """arq's version and the redis-py it runs on, from its own virtualenv."""
    code = "from importlib.metadata import version as v; print(v('arq'), 'redis-py', v('redis'))"
    return subprocess.run([arq_python(), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def best_of(values: dict[str, float], better: str) -> tuple[str, float] | None:
    """The peer with the best value of one round (``values``: side -> value), earnevents left out."""
    peers = {side: value for side, value in values.items() if side in PEERS}
    if not peers:
        return None
    pick = max if better == "higher" else min
    side = pick(peers, key=lambda s: peers[s])
    return side, peers[side]


def side_cells(fig: Figure, metric: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per side: summary of its values over the rounds, ``{"n/a": why}``, or None (not run)."""
    cells: dict[str, Any] = {}
    for side in SIDES:
        if side in fig.na:
            cells[side] = {"n/a": fig.na[side]}
        elif rounds and side in rounds[0][fig.number]:
            cells[side] = summarize([rnd[fig.number][side][metric] for rnd in rounds])
        else:
            cells[side] = None
    return cells


def table(raw: dict[str, Any], figs: list[Figure]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    rounds = raw["rounds"]
    for fig in figs:
        for metric, better, target in fig.metrics:
            ee = [rnd[fig.number]["earnevents"][metric] for rnd in rounds]
            ratios = None
            if rounds and "celery" in rounds[0][fig.number]:
                ce = [rnd[fig.number]["celery"][metric] for rnd in rounds]
                ratios = [ratio(a, b) for a, b in zip(ee, ce, strict=True)]
            best_ratios, best_sides = [], []
            for rnd in rounds:
                best = best_of({side: m[metric] for side, m in rnd[fig.number].items()}, better)
                if fig.best_peer and best is not None:
                    best_sides.append(best[0])
                    best_ratios.append(ratio(rnd[fig.number]["earnevents"][metric], best[1]))
            rows.append(
                {
                    "fig": fig.number,
                    "title": fig.title,
                    "metric": metric,
                    "better": better,
                    **side_cells(fig, metric, rounds),
                    "ratio": summarize(ratios) if ratios else None,
                    "best_peer": Counter(best_sides).most_common(1)[0][0] if best_sides else None,
                    "ratio_best_peer": summarize(best_ratios) if best_ratios else None,
                    "target": target,
                    "met": met(target, ee, ratios, best_ratios) if ratios else None,
                }
            )
    for number in ("1", "4"):
        key = f"8.{number}"
        if rounds and key in rounds[0]:
            for side in rounds[0][key]:
                ratios = [rnd[key][side]["rate"] / rnd[number][side]["rate"] for rnd in rounds]
                rows.append(
                    {
                        "fig": key,
                        "title": f"appendonly everysec / off, fig {number}, {LABELS[side]}",
                        "metric": "rate",
                        "better": "higher",
                        **dict.fromkeys(SIDES),
                        "ratio": summarize(ratios),
                        "best_peer": None,
                        "ratio_best_peer": None,
                        "target": "report",
                        "met": None,
                    }
                )
    memory = raw.get("memory")
    if memory:
        growth = {side: memory[f"{side}_mb"][1] - memory[f"{side}_mb"][0] for side in SIDES if f"{side}_mb" in memory}
        best = best_of(growth, "lower")
        rows.append(
            {
                "fig": "7",
                "title": f"worker RSS growth, {memory['events']} pending delayed events",
                "metric": "growth_mb",
                "better": "lower",
                **{side: summarize([growth[side]]) if side in growth else None for side in SIDES},
                "ratio": None,  # a ratio of growths near zero says nothing: the columns do
                "best_peer": best[0] if best else None,
                "ratio_best_peer": None,
                "target": "earnevents < 20 MB",
                "met": growth["earnevents"] < 20,
            }
        )
    return rows


TOP_COMMANDS = 8


def redis_commands(rounds: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Figures 1, 4 and 6: per side, the Redis commands that took most time per handled event
    (median over the rounds of ``INFO commandstats`` usec per event, calls per event beside it).
    A Lua script's time includes the commands it calls, which are listed again on their own."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for number in ("1", "4", "6"):
        if not rounds or number not in rounds[0]:
            continue
        for side in rounds[0][number]:
            names = {k.split(":", 1)[1] for rnd in rounds for k in rnd[number][side] if k.startswith("cmd_us:")}
            if not names:
                continue
            per = [
                {
                    "command": name,
                    "us_per_event": statistics.median(rnd[number][side].get(f"cmd_us:{name}", 0.0) for rnd in rounds),
                    "calls_per_event": statistics.median(
                        rnd[number][side].get(f"cmd_calls:{name}", 0.0) for rnd in rounds
                    ),
                }
                for name in names
            ]
            per.sort(key=lambda c: -c["us_per_event"])
            out.setdefault(number, {})[side] = per[:TOP_COMMANDS]
    return out


def print_commands(commands: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    for number, by_side in commands.items():
        print(f"\nfig {number}: Redis commands by time inside them per event (INFO commandstats, median)")
        for side, per in by_side.items():
            listed = ", ".join(f"{c['command']} {c['us_per_event']:.2f} us ({c['calls_per_event']:.2f}x)" for c in per)
            print(f"  {LABELS[side]}: {listed}")


def met(target: str, ee: list[float], ratios: list[float], best_ratios: list[float]) -> bool | None:
    median = statistics.median(ratios)
    if target == ">= best peer":
        return statistics.median(best_ratios) >= 1.0 if best_ratios else None
    if target.startswith(">="):
        return median >= float(target[3:].rstrip("x"))
    if target == "<= Celery":
        return median <= 1.0
    if target == "<= best peer":
        return statistics.median(best_ratios) <= 1.0 if best_ratios else None
    if target == "earnevents <= 5 ms":
        return statistics.median(ee) <= 5
    return None


def fmt(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    if "n/a" in stats:
        return f"n/a: {stats['n/a']}"
    return f"{stats['median']:.4g} [{stats['min']:.4g}-{stats['max']:.4g}]"


def print_table(env: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(
        f"\nearnevents {env['earnevents']} vs Celery {env['celery']} (kombu {env['kombu']}), "
        f"Dramatiq {env.get('dramatiq')}, arq {env.get('arq')}; "
        f"{env['date']}, {env['cores']} cores, Python {env['python']}, {env['rounds']} round(s), {env['seconds']} s"
    )
    print(
        "| fig | what | metric | earnevents median [min-max] | Celery | Dramatiq | arq "
        "| ratio ee/Celery | ratio ee/best peer | target | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        met_text = {True: "yes", False: "**no**", None: ""}[row["met"]]
        best = "-"
        if row["best_peer"] and row["ratio_best_peer"] is None:  # fig 7: the peer that grew least
            best = f"- (least: {LABELS[row['best_peer']]})"
        elif row["best_peer"]:
            best = f"{fmt(row['ratio_best_peer'])} ({LABELS[row['best_peer']]})"
        cells = " | ".join(fmt(row[side]) for side in SIDES)
        print(
            f"| {row['fig']} | {row['title']} | {row['metric']} | {cells} "
            f"| {fmt(row['ratio'])} | {best} | {row['target']} | {met_text} |"
        )


if __name__ == "__main__":
    sys.exit(main())
