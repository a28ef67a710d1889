"""Group commits: the claims and step writes of every run a worker holds, written together.

Every run in flight writes once per step. Committing each alone costs a BEGIN, a
COMMIT (a WAL flush) and a connection checkout per step; under a burst the writes of
hundreds of runs wait together, so a batch commits them at once. Claims of the
messages Dramatiq's threads hand over are grouped the same way. Both run on the
runner's event loop (`tasks/runner.py`); the database work runs on a small pool of
threads (`STEPWISE_WORKER_DB_THREADS`), so the loop never blocks on Postgres.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.outcome import StepOutcome
from db import runs
from db.claims import claim_executions
from db.session import session_scope

T = TypeVar("T")
K = TypeVar("K")
R = TypeVar("R")
MAX_BATCH = 200  # writes (or claims) per group commit
CLAIM_BATCHES = 2  # group claims written at the same time
CLAIM_TRIES = 3
RETRY_S = 0.5  # after a lost connection (workers' pools have no pre-ping)


@dataclass(frozen=True)
class Answer:
    """A step the agent answered, not yet stored: it is stored with the next write."""

    step_run_id: int
    outcome: StepOutcome


@dataclass(frozen=True)
class Write:
    """A run's write waiting for the next group commit."""

    order: tuple[str, str]  # `lock_order`
    answer: Answer | None
    work: Callable[[Session], Any] | None
    done: asyncio.Future[Any]
    start: runs.StepStart | None = None  # a step start: one statement for all of a batch
    end: runs.RunEnd | None = None  # a run's end: one statement for all of a batch


def lock_order(claim: runs.Claim) -> tuple[str, str]:
    """Where a run's write goes in a group commit: by schedule (the counters a run's end
    moves), then by run. Every batch locks rows in this order, so two batches ending
    runs of the same schedules cannot deadlock on their counters."""
    return (str(claim.schedule_id or ""), str(claim.execution_id))


class Batches(Generic[K, R]):
    """Requests of the moment answered together: each batch is one call of `fetch` (one
    transaction) on a database thread, up to `parallel` batches at once; when a batch
    fails, each of its requests is tried alone, so one bad request fails only itself."""

    def __init__(
        self,
        run: Callable[[Callable[[], list[R]]], Awaitable[list[R]]],
        fetch: Callable[[list[K]], list[R]],
        parallel: int,
    ) -> None:
        self.run = run
        self.fetch = fetch
        self.parallel = parallel
        self.queue: list[tuple[K, asyncio.Future[R]]] = []
        self.busy = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def get(self, key: K) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.queue.append((key, done))
        if self.busy < self.parallel:
            self.busy += 1
            self.tasks.add(task := asyncio.create_task(self._batches()))
            task.add_done_callback(self.tasks.discard)
        return await done

    async def _batches(self) -> None:
        try:
            while self.queue:
                batch, self.queue = self.queue[:MAX_BATCH], self.queue[MAX_BATCH:]
                keys = [key for key, _ in batch]
                try:
                    results: list[Any] = await self.run(partial(self.fetch, keys))
                except Exception:  # one request failed, or the database: each alone
                    results = []
                    for key in keys:
                        try:
                            results += await self.run(partial(self.fetch, [key]))
                        except Exception as exc:
                            results.append(exc)
                for (_, done), result in zip(batch, results, strict=True):
                    if done.done():
                        continue
                    if isinstance(result, BaseException):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
        finally:
            self.busy -= 1


class GroupCommits:
    """The batches of one runner; used on its event loop only."""

    def __init__(self, *, threads: int, lease_s: int) -> None:
        self.threads = threads
        self.lease_s = lease_s
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="stepwise-db")
        self.pending: list[Write] = []
        self.flushing = 0
        self.claims = Batches(self.run, partial(_claim_all, lease_s=lease_s), CLAIM_BATCHES)
        self.waiting = Batches(self.run, _next_waiting, CLAIM_BATCHES)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, work: Callable[[], T]) -> T:
        """`work` on a database thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def close(self) -> None:
        self.executor.shutdown(wait=False)

    def _start(self, batches: Callable[[], Any]) -> None:
        self.tasks.add(task := asyncio.create_task(batches()))
        task.add_done_callback(self.tasks.discard)

    async def claim(self, execution_id: uuid.UUID, *, ahead: bool) -> runs.ClaimResult:
        """Claim a run in the next group claim (`ahead`: its slot is still to come)."""
        return await self.claims.get((execution_id, ahead))

    async def next_waiting(self, schedule_id: uuid.UUID) -> runs.RunMessage | None:
        """The run `schedule_id` held back, to start now that its previous run has ended
        (committed): looked up with the other runs' ends of the moment, in one query."""
        return await self.waiting.get(schedule_id)

    async def write(
        self, claim: runs.Claim, answer: Answer | None, work: Callable[[Session], T]
    ) -> T:
        """Store `answer` and do `work` in the next group commit; up to `threads`
        batches are written at the same time. Raises OperationalError when the
        database cannot be reached (the caller decides whether to try again)."""
        result: T = await self._enqueue(Write(lock_order(claim), answer, work, _future()))
        return result

    async def start(self, start: runs.StepStart) -> int | None:
        """Record `start` (`runs.start_steps`) in the next group commit, in one statement
        with the other step starts of the batch; its step run's id, or None if the run
        is no longer this claim's. Raises as `write` does."""
        write = Write(lock_order(start.claim), None, None, _future(), start=start)
        result: int | None = await self._enqueue(write)
        return result

    async def end(self, end: runs.RunEnd) -> bool:
        """End a run (`runs.finish_executions`) in the next group commit, in one statement
        with the other ends of the batch; False if it was no longer this claim's."""
        result: bool = await self._enqueue(
            Write(lock_order(end.claim), None, None, _future(), end=end)
        )
        return result

    async def _enqueue(self, write: Write) -> Any:
        self.pending.append(write)
        if self.flushing < self.threads:
            self.flushing += 1
            self._start(self._flush)
        return await write.done

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                batch.sort(key=lambda write: write.order)
                try:
                    results = await self.run(partial(_store_all, batch, self.lease_s))
                except OperationalError as exc:  # the database: each caller retries
                    for write in batch:
                        if not write.done.done():
                            write.done.set_exception(exc)
                    continue
                except Exception:  # one write failed: the others must not fail with it
                    for write in batch:
                        try:
                            result = await self.run(partial(_store_all, [write], self.lease_s))
                        except Exception as exc:
                            if not write.done.done():
                                write.done.set_exception(exc)
                        else:
                            if not write.done.done():
                                write.done.set_result(result[0])
                    continue
                for write, result in zip(batch, results, strict=True):
                    if not write.done.done():
                        write.done.set_result(result)
        finally:
            self.flushing -= 1


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def _store_all(batch: list[Write], lease_s: int) -> list[Any]:
    """Do each write of `batch`, all in one transaction: the step starts in one
    statement, the runs' ends in another, then the other writes in the batch's lock
    order. Each run's writes touch its own rows, and the ends lock the schedules whose
    counters they move in one order, so batches written at once cannot deadlock."""
    results: list[Any] = [None] * len(batch)
    with session_scope() as session:
        starts = [(i, write.start) for i, write in enumerate(batch) if write.start is not None]
        if starts:
            ids = runs.start_steps(session, [start for _, start in starts], lease_s=lease_s)
            for (i, _), step_run_id in zip(starts, ids, strict=True):
                results[i] = step_run_id
        ends = [(i, write.end) for i, write in enumerate(batch) if write.end is not None]
        if ends:
            ended = runs.finish_executions(session, [end for _, end in ends])
            for (i, _), was_ours in zip(ends, ended, strict=True):
                results[i] = was_ours
        for i, write in enumerate(batch):
            if write.answer is not None:
                runs.finish_step(session, write.answer.step_run_id, write.answer.outcome)
            if write.work is not None:
                results[i] = write.work(session)
    return results


def _claim_all(requests: list[tuple[uuid.UUID, bool]], lease_s: int) -> list[runs.ClaimResult]:
    """Claim each run (`(id, ahead)`), all in one transaction; once more after a lost
    connection (workers' pools have no pre-ping)."""
    ids = [execution_id for execution_id, _ in requests]
    ahead = frozenset(execution_id for execution_id, early in requests if early)
    for attempt in range(CLAIM_TRIES):
        try:
            with session_scope() as session:
                return claim_executions(session, ids, lease_s=lease_s, ahead=ahead)
        except OperationalError:
            if attempt == CLAIM_TRIES - 1:
                raise
            time.sleep(RETRY_S)
    raise AssertionError("unreachable")


def _next_waiting(schedule_ids: list[uuid.UUID]) -> list[runs.RunMessage | None]:
    """The run each schedule holds back, if any, read after the ends that freed them
    have committed (a claim that saw the run still running has made its decision by
    then; one that comes later sees it ended and starts)."""
    with session_scope() as session:
        waiting = runs.next_waiting(session, schedule_ids)
    return [waiting.get(schedule_id) for schedule_id in schedule_ids]
