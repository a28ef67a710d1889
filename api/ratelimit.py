"""The rate limit: STEPWISE_API_RATE_PER_MINUTE calls per minute for each API token, each
webhook and each async step's callback URL.

Counted in Redis, so every api process shares one count, and on Redis's clock (no
skew between hosts): one script increments the caller's counter for the current
minute and answers how many seconds are left of it when the limit is passed. The
check runs after authentication (a token's, or a webhook call's secret or signature)
and before anything is written: a refused call writes nothing (`tasks/flow.py` does
the runner's limits the same way). When Redis cannot be reached the call is let
through, with a warning in the log: the limit protects the database from one busy
script; it must not take the API down with Redis.
"""

from __future__ import annotations

import logging
import uuid
from functools import lru_cache
from typing import Any

import redis

from core.settings import get_settings

log = logging.getLogger(__name__)
WINDOW_S = 60
# KEYS[1]: the caller's counter prefix; ARGV[1]: the limit. Returns 0 (allowed) or the
# seconds until the window ends.
COUNT = """
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[2])
local start = now - (now % window)
local key = KEYS[1] .. ':' .. start
local used = redis.call('INCR', key)
if used == 1 then
  redis.call('EXPIRE', key, window + 1)
end
if used > tonumber(ARGV[1]) then
  return math.max(1, start + window - now)
end
return 0
"""


@lru_cache(maxsize=1)
def _script() -> Any:
    client = redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=2, socket_timeout=2
    )
    return client.register_script(COUNT)


def seconds_to_wait(caller_id: uuid.UUID) -> int:
    """0 if the caller (a token's, a webhook's or a callback's id) may call now (counted);
    else seconds until it may."""
    limit = get_settings().api_rate_per_minute
    try:
        return int(_script()(keys=[f"stepwise:api:rate:{caller_id}"], args=[limit, WINDOW_S]))
    except redis.RedisError as exc:
        log.warning("rate limit not checked, Redis unreachable: %s", type(exc).__name__)
        return 0
