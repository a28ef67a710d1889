"""Counts a process's database round trips for `python -m bench.versus --cost`.

Put on PYTHONPATH of the worker processes only (never imported by the product):
every SQLAlchemy engine's statements, commits, rollbacks and pool checkouts (each
checkout costs a pre-ping round trip with `pool_pre_ping`) are counted, and the
counts are written every 0.5 s to `$STEPWISE_BENCH_COUNTS/<pid>.json`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

OUT = os.environ.get("STEPWISE_BENCH_COUNTS")


def _install(out: Path) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    counts: Counter[str] = Counter()

    def count(name: str) -> None:
        counts[name] += 1  # a GIL-atomic enough increment for a benchmark

    event.listen(Engine, "before_cursor_execute", lambda *a, **k: count("statements"))
    event.listen(Engine, "commit", lambda *a, **k: count("commits"))
    event.listen(Engine, "rollback", lambda *a, **k: count("rollbacks"))
    event.listen(Pool, "checkout", lambda *a, **k: count("checkouts"))

    def write() -> None:
        path = out / f"{os.getpid()}.json"
        while True:
            time.sleep(0.5)
            part = path.with_suffix(".part")
            part.write_text(json.dumps(dict(counts)))
            part.replace(path)  # atomic: a reader never sees half a file

    def start() -> None:
        counts.clear()
        threading.Thread(target=write, daemon=True, name="bench-counts").start()

    start()
    os.register_at_fork(after_in_child=start)  # dramatiq forks its worker processes


if OUT:
    _install(Path(OUT))
