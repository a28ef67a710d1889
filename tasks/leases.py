"""Leases: the runner's heartbeat renews the leases of every run it holds, and drops what it lost.

The runner renews the leases of all its runs in one statement every third of
`STEPWISE_LEASE_S`. A killed process stops renewing: every other worker sweeps for
expired leases just as often, so its runs start again about one lease after the
kill, however many it held and however long their steps' timeouts. A run the
renewal no longer finds (cancelled, taken over) has its call dropped at once. If
the database cannot be reached for a whole lease, every call in flight is dropped:
another worker may take the runs over, and two calls for one step must never be
alive at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from functools import partial

from db import runs
from db.session import session_scope
from tasks.commits import GroupCommits
from tasks.flight import Flight
from tasks.periodic import recover_stranded
from tasks.send import Send

log = logging.getLogger(__name__)
RENEW_RETRY_S = 1.0  # after a failed lease renewal


class Leases:
    """The leases of one runner's runs (`flights`, the runner's own dict)."""

    def __init__(
        self, *, lease_s: int, commits: GroupCommits, flights: dict[uuid.UUID, Flight], send: Send
    ) -> None:
        self.lease_s = lease_s
        self.commits = commits
        self.flights = flights
        self.send = send
        # Until when (monotonic) the leases hold as last renewed: a write may wait
        # for the database only while they do.
        self.until = time.monotonic() + lease_s

    async def heartbeat(self) -> None:
        """Renew every lease this process holds, drop what it lost, sweep for strays."""
        every = self.lease_s / 3
        pause = every
        while True:
            await asyncio.sleep(pause)
            held = [(f.claim.execution_id, f.claim.attempt) for f in self.flights.values()]
            began = time.monotonic()
            try:
                kept = await self.commits.run(partial(_renew, held, self.lease_s))
                self.until = began + self.lease_s
                pause = every
            except Exception:
                log.warning("could not renew leases; trying again", exc_info=True)
                kept = None
                pause = min(every, RENEW_RETRY_S)  # the lease is running out: soon
            expired = kept is None and time.monotonic() >= self.until
            flights = list(self.flights.values())
            for flight in lost_flights(flights, held, kept, expired=expired):
                if flight.calling and flight.task is not None:
                    flight.task.cancel()
            try:
                await self.commits.run(lambda: recover_stranded(self.send, leases_only=True))
            except Exception:
                log.warning("could not look for stranded runs", exc_info=True)


def lost_flights(
    flights: list[Flight],
    asked: list[tuple[uuid.UUID, int]],
    kept: set[uuid.UUID] | None,
    *,
    expired: bool,
) -> list[Flight]:
    """The runs this process must drop after a renewal: those it asked about and the
    database no longer gave it (cancelled, taken over), or all when the renewal failed
    and the local lease ran out. A run claimed while the renewal ran is not lost."""
    if kept is None:
        return flights if expired else []
    asked_set = set(asked)
    return [
        f
        for f in flights
        if (f.claim.execution_id, f.claim.attempt) in asked_set and f.claim.execution_id not in kept
    ]


def _renew(held: list[tuple[uuid.UUID, int]], lease_s: int) -> set[uuid.UUID]:
    with session_scope() as session:
        return runs.renew_leases(session, held, lease_s=lease_s)
