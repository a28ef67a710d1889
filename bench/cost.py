"""What a step costs: worker CPU, Postgres CPU, database and Redis round trips.

Used by `python -m bench.versus --cost`: a snapshot is taken when the burst's
tick is sent and another when every run has finished; the difference is divided
by the step calls the agent saw.

- worker CPU: user + system time of the Procfile `worker` process tree (psutil);
- Postgres CPU: the same for the server backends connected to the run's database
  (`pg_stat_activity`), the harness's own connection excepted;
- database round trips: statements, commits and pool checkouts (one pre-ping
  each) counted inside the worker processes by `bench/counting/sitecustomize.py`;
- Redis commands: `INFO commandstats` of the Redis server (exact only on a Redis
  of its own: `--redis-url embedded`).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text

COUNTING = Path(__file__).resolve().parent / "counting"


def _cpu_s(processes: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in processes:
        try:
            times = p.cpu_times()
            out[p.pid] = times.user + times.system
        except psutil.Error:
            pass
    return out


@dataclass
class Snapshot:
    worker_cpu: dict[int, float]
    pg_cpu: dict[int, float]
    db: Counter[str]
    redis: Counter[str] = field(default_factory=Counter)


def snapshot(worker_pid: int, counts_dir: Path, redis_client: Any) -> Snapshot:
    from db.session import session_scope

    root = psutil.Process(worker_pid)
    with session_scope() as session:
        pids = session.scalars(
            text(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).all()
    db: Counter[str] = Counter()
    for f in counts_dir.glob("*.json"):
        with contextlib.suppress(ValueError, OSError):  # a process that just exited
            db.update(json.loads(f.read_text()))
    stats = redis_client.info("commandstats")
    redis = Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()})
    return Snapshot(
        _cpu_s([root, *root.children(recursive=True)]),
        _cpu_s([psutil.Process(p) for p in pids if psutil.pid_exists(p)]),
        db,
        redis,
    )


def per_step(before: Snapshot, after: Snapshot, steps: int) -> dict[str, float]:
    """Costs per step call between two snapshots."""

    def grown(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(v - a.get(pid, 0.0) for pid, v in b.items())

    redis = after.redis - before.redis
    db = after.db - before.db
    return {
        "worker_cpu_ms": 1000 * grown(before.worker_cpu, after.worker_cpu) / steps,
        "pg_cpu_ms": 1000 * grown(before.pg_cpu, after.pg_cpu) / steps,
        "statements": db["statements"] / steps,
        "commits": db["commits"] / steps,
        "checkouts": db["checkouts"] / steps,
        "redis_commands": sum(redis.values()) / steps,
        "redis_top": ", ".join(f"{k} {v / steps:.2f}" for k, v in redis.most_common(4)),
    }
