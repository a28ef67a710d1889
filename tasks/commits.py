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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from core.outcome import StepOutcome
from db import runs
from db.claims import claim_executions
from db.session import session_scope

T = TypeVar("T")
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
    work: Callable[[Session], Any]
    done: asyncio.Future[Any]


def lock_order(claim: runs.Claim) -> tuple[str, str]:
    """Where a run's write goes in a group commit: by schedule (the counters a run's end
    moves), then by run. Every batch locks rows in this order, so two batches ending
    runs of the same schedules cannot deadlock on their counters."""
    return (str(claim.schedule_id or ""), str(claim.execution_id))


class GroupCommits:
    """The batches of one runner; used on its event loop only."""

    def __init__(self, *, threads: int, lease_s: int) -> None:
        self.threads = threads
        self.lease_s = lease_s
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="stepwise-db")
        self.pending: list[Write] = []
        self.flushing = 0
        self.claims: list[tuple[uuid.UUID, bool, asyncio.Future[runs.ClaimResult]]] = []
        self.claiming = 0
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
        done: asyncio.Future[runs.ClaimResult] = asyncio.get_running_loop().create_future()
        self.claims.append((execution_id, ahead, done))
        if self.claiming < CLAIM_BATCHES:
            self.claiming += 1
            self._start(self._claim_batches)
        return await done

    async def _claim_batches(self) -> None:
        try:
            while self.claims:
                batch, self.claims = self.claims[:MAX_BATCH], self.claims[MAX_BATCH:]
                ids = [execution_id for execution_id, _, _ in batch]
                ahead = frozenset(execution_id for execution_id, early, _ in batch if early)
                try:
                    results: list[Any] = await self.run(
                        partial(_claim_all, ids, self.lease_s, ahead)
                    )
                except Exception:  # one claim failed, or the database: each alone
                    results = []
                    for execution_id in ids:
                        try:
                            results += await self.run(
                                partial(_claim_all, [execution_id], self.lease_s, ahead)
                            )
                        except Exception as exc:
                            results.append(exc)
                for (_, _, done), result in zip(batch, results, strict=True):
                    if done.done():
                        continue
                    if isinstance(result, BaseException):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
        finally:
            self.claiming -= 1

    async def write(
        self, claim: runs.Claim, answer: Answer | None, work: Callable[[Session], T]
    ) -> T:
        """Store `answer` and do `work` in the next group commit; up to `threads`
        batches are written at the same time. Raises OperationalError when the
        database cannot be reached (the caller decides whether to try again)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(Write(lock_order(claim), answer, work, done))
        if self.flushing < self.threads:
            self.flushing += 1
            self._start(self._flush)
        result: T = await done
        return result

    async def _flush(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
                batch.sort(key=lambda write: write.order)
                items = [(write.answer, write.work) for write in batch]
                try:
                    results = await self.run(partial(_store_all, items))
                except OperationalError as exc:  # the database: each caller retries
                    for write in batch:
                        if not write.done.done():
                            write.done.set_exception(exc)
                    continue
                except Exception:  # one write failed: the others must not fail with it
                    for write in batch:
                        try:
                            one = [(write.answer, write.work)]
                            result = await self.run(partial(_store_all, one))
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


def _store_all(items: list[tuple[Answer | None, Callable[[Session], Any]]]) -> list[Any]:
    """Store each answer and do each write, all in one transaction."""
    results = []
    with session_scope() as session:
        for answer, work in items:
            if answer is not None:
                runs.finish_step(session, answer.step_run_id, answer.outcome)
            results.append(work(session))
    return results


def _claim_all(
    ids: list[uuid.UUID], lease_s: int, ahead: frozenset[uuid.UUID]
) -> list[runs.ClaimResult]:
    """Claim each run, all in one transaction; once more after a lost connection
    (workers' pools have no pre-ping)."""
    for attempt in range(CLAIM_TRIES):
        try:
            with session_scope() as session:
                return claim_executions(session, ids, lease_s=lease_s, ahead=ahead)
        except OperationalError:
            if attempt == CLAIM_TRIES - 1:
                raise
            time.sleep(RETRY_S)
    raise AssertionError("unreachable")
