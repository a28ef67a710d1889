"""What is in the Dramatiq queues, read straight from the Redis broker's keys.

Key layout of dramatiq's Redis broker (namespace "dramatiq"), per queue `q`:
`q` list of waiting message ids, `q.msgs` hash id -> message (waiting and
in flight), `q.DQ.msgs` delayed messages, `q.XQ` zset of dead message ids
scored by the time they died, `q.XQ.msgs` their bodies; `__heartbeats__`
is a zset of worker ids scored by their last heartbeat in ms.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq

from core.errors import InvalidState, NotFound
from tasks.broker import QUEUES, setup_broker

NAMESPACE = "dramatiq"
LIVE_WORKER_S = 60
# Options that belong to one delivery, not to the work: a re-sent message gets fresh ones.
_DELIVERY_OPTIONS = ("redis_message_id", "eta", "retries", "traceback", "dead_message_ttl")


def _key(*parts: str) -> str:
    return ":".join((NAMESPACE, ".".join(parts)))


def _client() -> Any:
    return setup_broker().client


@dataclass(frozen=True)
class QueueStats:
    queue: str
    queued: int  # waiting for a worker
    in_flight: int  # fetched by a worker, not yet acknowledged
    delayed: int  # waiting for their time (retries, future slots)
    dead: int


def queue_stats(queue: str) -> QueueStats:
    client = _client()
    pipe = client.pipeline()
    pipe.llen(_key(queue))
    pipe.hlen(_key(queue, "msgs"))
    pipe.hlen(_key(queue, "DQ", "msgs"))
    pipe.zcard(_key(queue, "XQ"))
    waiting, stored, delayed, dead = pipe.execute()
    return QueueStats(queue, waiting, max(stored - waiting, 0), delayed, dead)


def all_queue_stats() -> list[QueueStats]:
    return [queue_stats(queue) for queue in QUEUES]


@dataclass(frozen=True)
class Worker:
    worker_id: str
    last_seen: datetime


def live_workers(max_age_s: int = LIVE_WORKER_S) -> list[Worker]:
    """Worker processes whose last heartbeat is newer than `max_age_s`."""
    since_ms = (time.time() - max_age_s) * 1000
    rows = _client().zrangebyscore(_key("__heartbeats__"), since_ms, "+inf", withscores=True)
    return [Worker(_text(worker), _from_ms(score)) for worker, score in rows]


@dataclass(frozen=True)
class DeadLetter:
    message_id: str  # the broker's id of this delivery (field of the XQ hash)
    queue: str
    actor: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retries: int
    failed_at: datetime
    error: str | None


def dead_letters(queue: str, *, limit: int = 100) -> list[DeadLetter]:
    """The newest dead messages of `queue`, newest first."""
    client = _client()
    entries = client.zrevrange(_key(queue, "XQ"), 0, limit - 1, withscores=True)
    if not entries:
        return []
    bodies = client.hmget(_key(queue, "XQ", "msgs"), [e for e, _ in entries])
    letters = []
    for (entry, score), body in zip(entries, bodies, strict=True):
        if body is None:
            continue
        message = dramatiq.Message.decode(body)
        letters.append(
            DeadLetter(
                message_id=_text(entry),
                queue=queue,
                actor=message.actor_name,
                args=tuple(message.args),
                kwargs=dict(message.kwargs),
                retries=int(message.options.get("retries", 0)),
                failed_at=_from_ms(score),
                error=_error(message.options),
            )
        )
    return letters


def retry_dead_letter(queue: str, message_id: str) -> bool:
    """Take a dead message out of the dead-letter queue and send it again; False if gone."""
    client = _client()
    body = client.hget(_key(queue, "XQ", "msgs"), message_id)
    if body is None:
        return False
    # Remove first: two people pressing Retry must not send it twice.
    if not client.zrem(_key(queue, "XQ"), message_id):
        return False
    client.hdel(_key(queue, "XQ", "msgs"), message_id)
    dead = dramatiq.Message.decode(body)
    if dead.actor_name == "run_execution" and _reopen(dead):
        return True
    options = {k: v for k, v in dead.options.items() if k not in _DELIVERY_OPTIONS}
    actor = setup_broker().get_actor(dead.actor_name)
    actor.send_with_options(args=tuple(dead.args), kwargs=dict(dead.kwargs), **options)
    return True


def _reopen(dead: dramatiq.Message[Any]) -> bool:
    """Retry a dead run the way the Executions page does: the failed row is re-opened
    and resumes at its failed step (a raw re-send would find it failed and do nothing)."""
    from tasks.actions import retry

    try:
        retry(uuid.UUID(str(dead.args[0])), actor="dashboard (dead letter)")
    except (InvalidState, NotFound, ValueError, IndexError):
        return False  # already running again, or gone: the raw message is harmless
    return True


def purge_dead_letters(queue: str) -> int:
    """Delete every dead message of `queue` (the queue's live messages stay); returns count."""
    client = _client()
    count = int(client.zcard(_key(queue, "XQ")))
    client.delete(_key(queue, "XQ"), _key(queue, "XQ", "msgs"))
    return count


def _error(options: dict[str, Any]) -> str | None:
    text = options.get("traceback")
    if not text:
        return None
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _from_ms(score: float) -> datetime:
    return datetime.fromtimestamp(score / 1000, tz=UTC)
