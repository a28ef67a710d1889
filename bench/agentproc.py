"""Start the recording agent as its own process, and the plain-httpx baseline against it.

The baseline is what Stepwise's workers would do with no queue and no database:
`processes` x `threads` loops (the worker's shape), one pooled httpx client per
process, POSTing a step-sized JSON body with an Idempotency-Key.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.agent import READY, read_calls
from stepwise.embedded import free_port


@dataclass
class RunningAgent:
    url: str
    process: subprocess.Popen[bytes]
    record: Path

    def stop(self) -> None:
        """Stop the agent; every call it recorded is then in `record`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)

    def stop_and_read(self) -> list[tuple[float, str, str, int]]:
        """Stop the agent and return every call it recorded."""
        self.stop()
        return read_calls(self.record)


@contextmanager
def agent_process(latency_ms: float, *, flush_s: float = 0.0) -> Iterator[RunningAgent]:
    """The recording agent; with `flush_s`, it appends its calls to `record` as it goes."""
    port = free_port()
    record = Path(tempfile.mkstemp(prefix="stepwise-bench-calls-", suffix=".jsonl")[1])
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.agent",
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--record",
            str(record),
            "--flush-s",
            str(flush_s),
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if READY not in line:
        process.kill()
        raise RuntimeError(f"bench agent did not start: {line!r}")
    try:
        yield RunningAgent(f"http://127.0.0.1:{port}/agent", process, record)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        record.unlink(missing_ok=True)


def _payload(i: int) -> dict[str, object]:
    return {
        "thread_id": f"baseline-{i}",
        "automation_id": "00000000-0000-0000-0000-000000000000",
        "user_id": "local",
        "message": "do part 1",
        "project_context": "benchmark",
        "step_number": 1 + i % 3,
        "total_steps": 3,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "execution_id": f"baseline-{i}",
        "schedule_id": None,
        "scheduled_for": "2026-01-01T00:00:00+00:00",
        "attempt": 1,
        "previous_output": None,
    }


def _process_loop(url: str, calls: int, threads: int, start_at: float) -> tuple[float, float, int]:
    import httpx

    client = httpx.Client(limits=httpx.Limits(max_connections=100, max_keepalive_connections=50))
    counter = iter(range(calls))
    lock = threading.Lock()
    ok = [0]

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            r = client.post(
                url, json=_payload(i), headers={"Idempotency-Key": f"b:{os.getpid()}:{i}"}
            )
            r.read()
            if r.status_code == 200:
                with lock:
                    ok[0] += 1

    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return started, time.time(), ok[0]


def httpx_baseline(url: str, *, calls: int, processes: int, threads: int) -> float:
    """Calls per second of `processes` x `threads` plain httpx loops doing `calls` POSTs."""
    start_at = time.time() + 1.0  # every process starts its loops at the same instant
    share = [calls // processes + (1 if p < calls % processes else 0) for p in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(_process_loop, [(url, n, threads, start_at) for n in share])
    first = min(r[0] for r in results)
    last = max(r[1] for r in results)
    done = sum(r[2] for r in results)
    if done != calls:
        raise RuntimeError(f"baseline: only {done} of {calls} calls succeeded")
    return calls / (last - first)
