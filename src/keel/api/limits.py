"""Per-key request rate and token budget, on the ``limits`` library.

In memory by default; with ``KEEL_REDIS_URL`` the counters live in Redis, so every worker and
every gateway instance shares them. Requests are limited per minute (moving window); model
tokens per day (fixed window): a request is refused once the day's budget is spent, and the
tokens a request used are counted when it finishes (its cost is not known before).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerDay, RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from keel.errors import ConfigError


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after: int


class KeyLimits:
    def __init__(
        self, *, requests_per_minute: int, tokens_per_day: int, redis_url: str | None = None
    ) -> None:
        uri = redis_url or "memory://"
        if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"KEEL_REDIS_URL must be a redis:// URL, not {redis_url!r}")
        try:
            self.storage = storage_from_string(uri)
        except Exception as exc:
            raise ConfigError(f"cannot use rate-limit storage {uri!r}: {exc}") from exc
        self.shared = redis_url is not None
        self.requests = RateLimitItemPerMinute(requests_per_minute)
        self.tokens = RateLimitItemPerDay(tokens_per_day)
        self._moving = MovingWindowRateLimiter(self.storage)
        self._fixed = FixedWindowRateLimiter(self.storage)

    def _retry_after(self, limiter: Any, item: Any, key_id: str) -> int:
        stats = limiter.get_window_stats(item, "keel", key_id)
        reset: float = stats.reset_time
        return max(1, math.ceil(reset - time.time()))

    def admit(self, key_id: str) -> Refusal | None:
        """Count a request; a :class:`Refusal` when the key is over a limit."""
        if not self._fixed.test(self.tokens, "keel", key_id):
            return Refusal(
                f"the key's daily token budget ({self.tokens.amount}) is spent",
                self._retry_after(self._fixed, self.tokens, key_id),
            )
        if not self._moving.hit(self.requests, "keel", key_id):
            return Refusal(
                f"more than {self.requests.amount} requests per minute",
                self._retry_after(self._moving, self.requests, key_id),
            )
        return None

    def spend_tokens(self, key_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        remaining = self._fixed.get_window_stats(self.tokens, "keel", key_id).remaining
        self._fixed.hit(self.tokens, "keel", key_id, cost=max(1, min(tokens, remaining)))

    def check_storage(self) -> bool:
        try:
            return bool(self.storage.check())
        except Exception:
            return False
