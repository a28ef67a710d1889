"""Sending work to the workers: the one module the API, the dashboard and the CLI use to
reach the queue (a run's message, an early dispatch), without the worker engine.

(Transitional: these delegate to the actors until the engine is split.)
"""

from __future__ import annotations

from collections.abc import Sequence

from db.runs import RunMessage


def send_run(message: RunMessage) -> None:
    """Hand one run to the workers, `message.delay_ms` from now, with its retry budget."""
    from tasks import actors

    actors.send_run(message)


def send_runs(messages: Sequence[RunMessage]) -> None:
    """`send_run` for each message, the Redis round trips shared."""
    from tasks import actors

    actors.send_runs(messages)


def dispatch_soon() -> None:
    """Dispatch now rather than at the next minute tick, so a slot due soon is not late."""
    from tasks import actors

    actors.dispatch.send()
