"""Bounded, jittered retries for temporary provider errors."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from pkifed.errors import TemporaryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetrySettings(BaseModel):
    """Retry policy for temporary provider errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(
        default=4, ge=1, le=20, description="Total attempts, the first one included."
    )
    base_delay: float = Field(
        default=0.2, gt=0, description="Delay before the second attempt, in seconds."
    )
    max_delay: float = Field(
        default=5.0, gt=0, description="Maximum delay between attempts, in seconds."
    )

    def delays(self, rng: random.Random | None = None) -> tuple[float, ...]:
        """Draw the sleep before each retry: jitter under an exponential ceiling."""
        # Jitter only spreads retries out; it needs no cryptographic randomness.
        rng = rng or random.Random()  # noqa: S311
        ceilings = (
            min(self.max_delay, self.base_delay * 2**attempt)
            for attempt in range(self.attempts - 1)
        )
        return tuple(rng.uniform(ceiling / 2, ceiling) for ceiling in ceilings)


def call_with_retry(
    operation: Callable[[], T],
    settings: RetrySettings,
    *,
    description: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``, retrying :class:`TemporaryError` with backoff.

    The last temporary error is re-raised once the attempts run out. Permanent
    errors propagate at once.
    """
    # The first attempt runs on the caller's path for every signature, so the
    # jittered delays are drawn only once an attempt has failed.
    delays: tuple[float, ...] = ()
    attempt = 1
    while True:
        try:
            return operation()
        except TemporaryError as error:
            if attempt >= settings.attempts:
                raise
            delays = delays or settings.delays()
            wait = max(delays[attempt - 1], error.retry_after or 0.0)
            logger.warning(
                "%s failed (attempt %d of %d): %s; will retry in %.2f s",
                description,
                attempt,
                settings.attempts,
                error,
                wait,
            )
            sleep(wait)
            attempt += 1
