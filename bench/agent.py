"""The bundled demo agent, recording each call's arrival for lateness figures.

    python -m bench.agent --port 8899 --latency-ms 0 --record calls.jsonl

Each call costs one tuple append in memory (no lock, no I/O); the tuples
`(arrival epoch s, idempotency key, scheduled_for, step_number)` are written as
JSON lines to `--record` when the process gets SIGTERM, so recording never
slows the agent down during a run.
"""

from __future__ import annotations

import argparse
import json
import signal
import socketserver
import threading
from pathlib import Path
from typing import Any

from stepwise.demo_agent import AgentServer, Call, Reply, default_reply

READY = "bench agent listening on"


def recording_server(*, port: int, latency_ms: float) -> tuple[AgentServer, list[Any]]:
    # The stdlib's listen backlog of 5 resets connections when 32 clients connect at
    # once (2 x 16 baseline threads): a benchmark artefact, not a figure.
    socketserver.TCPServer.request_queue_size = 128
    server = AgentServer(port=port, latency_ms=latency_ms, record=False)
    calls: list[Any] = []

    def respond(call: Call) -> Reply:
        body = call.body if isinstance(call.body, dict) else {}
        calls.append(
            (call.at, call.idempotency_key, body.get("scheduled_for"), body.get("step_number"))
        )
        return default_reply(call)

    server.responder = respond
    return server, calls


def read_calls(path: Path) -> list[tuple[float, str, str, int]]:
    with path.open() as f:
        return [tuple(json.loads(line)) for line in f]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--flush-s", type=float, default=0.0, help="append calls every S s")
    args = parser.parse_args()
    server, calls = recording_server(port=args.port, latency_ms=args.latency_ms)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    print(f"{READY} {server.url}", flush=True)
    written = 0
    while not stop.wait(args.flush_s or 0.5):
        if args.flush_s:
            written = append_calls(args.record, calls, written)
    server.stop()
    append_calls(args.record, calls, written)


def append_calls(path: Path, calls: list[Any], written: int) -> int:
    """Append the calls after the first `written` as whole lines; how many are written now."""
    upto = len(calls)  # handler threads only ever append
    with path.open("a") as f:
        f.writelines(json.dumps(call) + "\n" for call in calls[written:upto])
    return upto


if __name__ == "__main__":
    main()
