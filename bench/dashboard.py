"""Dashboard at scale: each page's `db.queries` calls timed over a million executions.

    python -m bench.dashboard --executions 1000000 --rounds 3 --repeat 20

The dataset (bench/dataset.py) is generated set-based in a fresh database. Each
page's calls are the ones its module in `dashboard/views/` makes (one warm-up,
then `--repeat` timed calls per round); the table gives the median over the
rounds of each round's p50 and p95, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from bench.common import (
    add_server_args,
    bench_database,
    fmt,
    machine,
    percentile,
    report,
    start_servers,
)
from bench.dataset import generate
from core.access import DEFAULT_WORKSPACE_ID, Actor

PAGE_SIZE = 50
# The dataset's member (bench/dataset.py): every query reads as it, scoped and checked.
BENCH = Actor("bench", DEFAULT_WORKSPACE_ID)


def page_calls(session: Any) -> list[tuple[str, str, Callable[[], Any]]]:
    """(page, what, call) for every read a dashboard page makes."""
    from db import figures
    from db import queries as q
    from db.session import db_now

    now = db_now(session)
    automation_id, schedule_id = session.execute(
        text("SELECT automation_id, id FROM schedules ORDER BY id LIMIT 1")
    ).one()
    some_execution = session.execute(
        text(
            "SELECT id FROM executions WHERE status = 'failed'"
            " ORDER BY queued_at DESC OFFSET 1000 LIMIT 1"
        )
    ).scalar()
    F = q.ExecutionFilters
    failed = F(statuses=("failed",))
    succeeded_30d = F(statuses=("succeeded",), since=now - timedelta(days=30))
    by_automation = F(automation_id=automation_id)
    last_page = (500 - 1) * PAGE_SIZE
    return [
        ("overview", "kpis", lambda: figures.kpis(session, actor=BENCH)),
        (
            "overview",
            "outcome_series 24 h by hour",
            lambda: figures.outcome_series(
                session, since=now - timedelta(days=1), bucket="hour", actor=BENCH
            ),
        ),
        (
            "overview",
            "outcome_series 14 d by day",
            lambda: figures.outcome_series(
                session, since=now - timedelta(days=14), bucket="day", actor=BENCH
            ),
        ),
        (
            "overview",
            "upcoming_runs",
            lambda: figures.upcoming_runs(session, limit=10, actor=BENCH),
        ),
        ("overview", "recent_failures", lambda: q.recent_failures(session, limit=10, actor=BENCH)),
        ("overview", "scheduler_liveness", lambda: figures.scheduler_liveness(session)),
        ("schedules", "list_schedules (1,000)", lambda: q.list_schedules(session, actor=BENCH)),
        ("schedules", "automation_names", lambda: q.automation_names(session, actor=BENCH)),
        (
            "schedules",
            "open runs of a schedule",
            lambda: q.count_executions(
                session, F(statuses=("queued", "running"), schedule_id=schedule_id), actor=BENCH
            ),
        ),
        ("automations", "list_automations", lambda: q.list_automations(session, actor=BENCH)),
        (
            "executions",
            "page 1, no filter",
            lambda: q.list_executions(session, F(), limit=PAGE_SIZE, actor=BENCH),
        ),
        (
            "executions",
            "page 500, no filter",
            lambda: q.list_executions(session, F(), limit=PAGE_SIZE, offset=last_page, actor=BENCH),
        ),
        (
            "executions",
            "page 1, status=failed",
            lambda: q.list_executions(session, failed, limit=PAGE_SIZE, actor=BENCH),
        ),
        (
            "executions",
            "page 500, status=failed",
            lambda: q.list_executions(
                session, failed, limit=PAGE_SIZE, offset=last_page, actor=BENCH
            ),
        ),
        (
            "executions",
            "page 500, succeeded, last 30 d",
            lambda: q.list_executions(
                session, succeeded_30d, limit=PAGE_SIZE, offset=last_page, actor=BENCH
            ),
        ),
        (
            "executions",
            "page 1, one automation",
            lambda: q.list_executions(session, by_automation, limit=PAGE_SIZE, actor=BENCH),
        ),
        (
            "executions",
            "page 100, one automation",
            lambda: q.list_executions(
                session, by_automation, limit=PAGE_SIZE, offset=99 * PAGE_SIZE, actor=BENCH
            ),
        ),
        (
            "executions",
            "schedule_stats 7 d",
            lambda: figures.schedule_stats(session, since=now - timedelta(days=7), actor=BENCH),
        ),
        ("executions", "schedule_labels", lambda: q.schedule_labels(session, actor=BENCH)),
        (
            "execution detail",
            "execution_detail",
            lambda: q.execution_detail(session, some_execution, actor=BENCH),
        ),
        (
            "automations",
            "run_grid (last 20 runs x steps)",
            lambda: q.execution_grid(session, automation_id, limit=20, actor=BENCH),
        ),
        (
            "overview",
            "failure_groups (needs attention, 24 h)",
            lambda: figures.failure_groups(
                session, since=now - timedelta(days=1), limit=10, actor=BENCH
            ),
        ),
        (
            "schedule",
            "get_schedule_row",
            lambda: q.get_schedule_row(session, schedule_id, actor=BENCH),
        ),
        (
            "schedule",
            "recent runs of the schedule",
            lambda: q.list_executions(session, F(schedule_id=schedule_id), limit=20, actor=BENCH),
        ),
        (
            "export",
            "count_executions, no filter",
            lambda: q.count_executions(session, F(), actor=BENCH),
        ),
        (
            "export",
            "count_executions, status=failed",
            lambda: q.count_executions(session, failed, actor=BENCH),
        ),
    ]


def time_pages(rounds: int, repeat: int) -> list[tuple[str, str, float, float]]:
    """(page, what, median p50 ms, median p95 ms) per call."""
    from db.session import session_scope

    per_call: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        with session_scope() as session:
            for page, what, call in page_calls(session):
                call()  # warm-up (plans, caches)
                samples = []
                for _ in range(repeat):
                    started = time.perf_counter()
                    call()
                    samples.append((time.perf_counter() - started) * 1000)
                per_call.setdefault((page, what), []).append(
                    (percentile(samples, 50), percentile(samples, 95))
                )
    return [
        (page, what, statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        for (page, what), rs in per_call.items()
    ]


def table(results: list[tuple[str, str, float, float]]) -> list[tuple[str, ...]]:
    rows = [("page", "query", "p50 (ms)", "p95 (ms)", "< 300 ms p95")]
    for page, what, p50, p95 in results:
        rows.append((page, what, fmt(p50), fmt(p95), "yes" if p95 < 300 else "**no**"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_server_args(parser)
    parser.add_argument("--executions", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    started = machine()
    servers = start_servers(args)
    try:
        with bench_database(servers):
            made = generate(args.executions)
            print(f"dataset: {made}", flush=True)
            results = time_pages(args.rounds, args.repeat)
    finally:
        servers.close()
    report(
        f"Dashboard at {args.executions:,} executions (median of {args.rounds} rounds x "
        f"{args.repeat} calls)",
        started,
        table(results),
        notes=(
            f"Dataset: {made['executions']:,} executions, {made['step_runs']:,} step_runs, "
            f"1,000 schedules, 90 days; generated in {made['insert_s']:.0f} s "
            f"(+ {made['vacuum_analyze_s']:.0f} s VACUUM ANALYZE)."
        ),
    )


if __name__ == "__main__":
    main()
