"""Flow control: an automation's concurrency limit and rate limit, over every worker.

Agents are rate-limited services (LLM quotas: "5 at once, 10 per second"). Before
each agent call the runner asks for a permit here; the answer is "go" or "wait this
many milliseconds". Both limits are checked and taken in one Redis script, atomic
over every worker process and machine, on Redis's clock (no skew between hosts):

- concurrency: a sorted set of the calls in flight, each with an expiry (its step's
  deadline and a margin), so a worker killed mid-call cannot hold a permit for ever;
- rate: a sliding window of the last calls' start times. `rate_limit_per_s` r allows
  n = max(1, round(r)) calls in any window of n / r seconds (10/s: 10 per second;
  0.5/s: 1 per 2 s).

A permit is never queued for: the runner waits (on its event loop, no thread held)
or, when the wait is long, hands the run back to the queue without spending a
retry (`tasks/flight.py`).
"""

from __future__ import annotations

import uuid
from typing import Any

import redis.asyncio as aioredis

ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[2])
local hold_ms = tonumber(ARGV[3])
local count = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    return -1
  end
end
if count > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if redis.call('ZCARD', KEYS[2]) >= count then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return math.max(1, tonumber(oldest[2]) + window - now)
  end
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], window + 1000)
end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now + hold_ms, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], hold_ms + 1000)
end
return 0
"""
POOL_SIZE = 32
BUSY = -1  # the concurrency limit is reached: no telling when a call ends


def rate_window(rate_per_s: float) -> tuple[int, int]:
    """(calls, window in ms) for a rate: at most `calls` starts in any such window."""
    calls = max(1, round(rate_per_s))
    return calls, max(1, round(calls / rate_per_s * 1000))


class FlowControl:
    """Permits for agent calls, shared by every worker through Redis."""

    def __init__(self, redis_url: str) -> None:
        # A blocking pool: a burst of waiting runs queues for a connection instead of
        # failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=POOL_SIZE)
        self.client: Any = aioredis.Redis(connection_pool=pool)
        self.script = self.client.register_script(ACQUIRE)

    async def acquire(
        self,
        automation_id: uuid.UUID,
        holder: str,
        *,
        concurrency: int | None,
        rate_per_s: float | None,
        hold_s: float,
    ) -> int:
        """0 when `holder` may call now (the permit is taken); else milliseconds to wait
        before asking again, or BUSY when only a finishing call can make room."""
        calls, window_ms = rate_window(rate_per_s) if rate_per_s else (0, 0)
        keys = [f"stepwise:flow:{automation_id}:calls", f"stepwise:flow:{automation_id}:starts"]
        args: list[str | int] = [holder, concurrency or 0, int(hold_s * 1000), calls, window_ms]
        return int(await self.script(keys=keys, args=args))

    async def release(self, automation_id: uuid.UUID, holder: str) -> None:
        await self.client.zrem(f"stepwise:flow:{automation_id}:calls", holder)

    async def close(self) -> None:
        await self.client.aclose()
