"""What is in the Dramatiq queues, read straight from the Redis broker's keys.

Key layout of dramatiq's Redis broker (namespace "dramatiq"), per queue `q`:
`q` list of waiting message ids, `q.msgs` hash id -> message (waiting and
in flight), `q.DQ.msgs` delayed messages, `q.XQ` zset of dead message ids
scored by the time they died, `q.XQ.msgs` their bodies; `__heartbeats__`
is a zset of worker ids scored by their last heartbeat in ms.

A run keeps one dead letter, its newest: `stepwise:dead-letter:<execution id>` names it
(`<queue> <message id>`, kept as long as Dramatiq keeps dead letters), so the one an
earlier attempt left goes when a later attempt dies, and a retried run loses its own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dramatiq

from tasks import workers
from tasks.broker import QUEUES, setup_broker
from tasks.send import send_message

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


def worker_processes() -> list[workers.WorkerInfo]:
    """Live worker processes by host and pid, from their beacons (`tasks.workers`)."""
    return workers.live_workers(_client())


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
    options: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The run's status and stored error, filled from the database by `service.queues`.
    run_status: str | None = None


def dead_letters(queue: str, *, limit: int | None = 100) -> list[DeadLetter]:
    """The newest dead messages of `queue`, newest first (all of them when `limit` is None).

    Every workspace's: `service.queues.dead_letters` narrows them to one.
    """
    client = _client()
    last = -1 if limit is None else limit - 1
    entries = client.zrevrange(_key(queue, "XQ"), 0, last, withscores=True)
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
                options=dict(message.options),
            )
        )
    return letters


def execution_of(letter: DeadLetter) -> uuid.UUID | None:
    """The execution a dead `run_execution` message was for; None for the deployment's own
    jobs (dispatch, housekeeping), which belong to no workspace."""
    if letter.actor != "run_execution" or not letter.args:
        return None
    try:
        return uuid.UUID(str(letter.args[0]))
    except ValueError:
        return None


def take_dead_letter(queue: str, message_id: str) -> dramatiq.Message[Any] | None:
    """Take a dead message out of the dead-letter queue; None if it is already gone."""
    client = _client()
    body = client.hget(_key(queue, "XQ", "msgs"), message_id)
    if body is None:
        return None
    # Remove first: two people pressing Retry must not send it twice.
    if not client.zrem(_key(queue, "XQ"), message_id):
        return None
    client.hdel(_key(queue, "XQ", "msgs"), message_id)
    return dramatiq.Message.decode(body)


def send_again(dead: DeadLetter) -> None:
    """Send a dead message's work again, to its actor's queue, with fresh delivery options."""
    options = {k: v for k, v in dead.options.items() if k not in _DELIVERY_OPTIONS}
    send_message(dead.actor, args=dead.args, kwargs=dead.kwargs, options=options)


def _dead_key(execution_id: uuid.UUID) -> str:
    return f"stepwise:dead-letter:{execution_id}"


def keep_newest_dead_letter(execution_id: uuid.UUID, queue: str, message_id: str) -> None:
    """The run's message `message_id`, about to be dead-lettered, becomes its one dead
    letter: the one an earlier attempt of the run left is removed."""
    client = _client()
    key = _dead_key(execution_id)
    previous = client.get(key)
    client.set(key, f"{queue} {message_id}", px=setup_broker().dead_message_ttl)
    if previous is not None:
        old_queue, _, old_id = _text(previous).partition(" ")
        if old_id != message_id:
            remove_dead_letters(old_queue, [old_id])


def forget_dead_letters_of(execution_ids: set[uuid.UUID]) -> int:
    """Remove every dead letter of these runs, in every queue (they were retried, and start
    again); returns how many were removed."""
    if not execution_ids:
        return 0
    removed = 0
    for queue in QUEUES:
        ids = [
            letter.message_id
            for letter in dead_letters(queue, limit=None)
            if execution_of(letter) in execution_ids
        ]
        removed += remove_dead_letters(queue, ids)
    _client().delete(*(_dead_key(i) for i in execution_ids))
    return removed


def remove_dead_letters(queue: str, message_ids: list[str]) -> int:
    """Delete these dead messages of `queue` (others stay); returns how many were there."""
    if not message_ids:
        return 0
    client = _client()
    removed = int(client.zrem(_key(queue, "XQ"), *message_ids))
    client.hdel(_key(queue, "XQ", "msgs"), *message_ids)
    return removed


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
