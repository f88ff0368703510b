"""Bounded, jittered retries of temporary errors."""

from __future__ import annotations

import pytest

from pkifed.errors import PermanentError, TemporaryError
from pkifed.providers.retry import RetrySettings, call_with_retry

SETTINGS = RetrySettings(attempts=4, base_delay=0.5, max_delay=1.0)


class Flaky:
    """Fails with the given errors in order, then returns ``done``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_success_needs_no_sleep() -> None:
    sleeps: list[float] = []
    operation = Flaky()

    assert call_with_retry(
        operation, SETTINGS, description="x", sleep=sleeps.append
    ) == ("done")
    assert operation.calls == 1
    assert sleeps == []


def test_temporary_errors_retried() -> None:
    sleeps: list[float] = []
    operation = Flaky(TemporaryError("busy"), TemporaryError("busy"))

    result = call_with_retry(operation, SETTINGS, description="x", sleep=sleeps.append)

    assert result == "done"
    assert operation.calls == 3
    assert len(sleeps) == 2
    assert all(0.25 <= delay <= 1.0 for delay in sleeps)


def test_attempts_bounded() -> None:
    sleeps: list[float] = []
    operation = Flaky(*(TemporaryError(f"busy {i}") for i in range(10)))

    with pytest.raises(TemporaryError, match="busy 3"):
        call_with_retry(operation, SETTINGS, description="x", sleep=sleeps.append)
    assert operation.calls == 4
    assert len(sleeps) == 3


def test_permanent_error_not_retried() -> None:
    sleeps: list[float] = []
    operation = Flaky(PermanentError("denied"))

    with pytest.raises(PermanentError):
        call_with_retry(operation, SETTINGS, description="x", sleep=sleeps.append)
    assert operation.calls == 1
    assert sleeps == []


def test_retry_after_honoured() -> None:
    sleeps: list[float] = []
    operation = Flaky(TemporaryError("throttled", retry_after=7.0))

    call_with_retry(operation, SETTINGS, description="x", sleep=sleeps.append)

    assert sleeps == [7.0]


def test_single_attempt_raises_at_once() -> None:
    sleeps: list[float] = []
    operation = Flaky(TemporaryError("busy"))

    with pytest.raises(TemporaryError):
        call_with_retry(
            operation,
            RetrySettings(attempts=1),
            description="x",
            sleep=sleeps.append,
        )
    assert sleeps == []
