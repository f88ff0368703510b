"""A reusable conformance kit for publish targets.

A test class subclasses :class:`TargetConformance`, implements
:meth:`~TargetConformance.new_target` and
:meth:`~TargetConformance.broken_target`, and sets ``location_pattern``; every
case below then runs against that target. Each test gets its own empty prefix,
so one bucket serves the whole module.
"""

from __future__ import annotations

import abc
import re
import threading
import uuid
from collections.abc import Iterator
from typing import ClassVar

import pytest

from pkifed.errors import ProviderError, ProviderPermanentError
from pkifed.providers.targets.base import (
    PreconditionFailedError,
    PublishTarget,
    PublishVerificationError,
)

BINARY = bytes(range(256)) * 3 + b"\r\n\x00\xff-----BEGIN"


def unique_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


class TargetConformance(abc.ABC):
    """Cases every publish target must pass."""

    # A regular expression that location("root.pem") must match in full;
    # "{prefix}" is replaced by the test's prefix.
    location_pattern: ClassVar[str]
    # Why precondition cases cannot run against this service, or None.
    precondition_skip: ClassVar[str | None] = None

    @abc.abstractmethod
    def new_target(self, prefix: str) -> PublishTarget:
        """Build a target that publishes under ``prefix`` in the shared store."""

    @abc.abstractmethod
    def broken_target(self) -> tuple[PublishTarget, type[ProviderError]]:
        """Build a target whose store rejects writes, and the error type expected."""

    @pytest.fixture
    def prefix(self) -> str:
        return unique_prefix()

    @pytest.fixture
    def target(self, prefix: str) -> Iterator[PublishTarget]:
        target = self.new_target(prefix)
        yield target
        target.close()

    def _needs_preconditions(self) -> None:
        if self.precondition_skip is not None:
            pytest.skip(self.precondition_skip)

    # --- writes ---------------------------------------------------------------------

    def test_write_new_object(self, target: PublishTarget) -> None:
        target.write("root.pem", b"one", None)
        stored = target.read("root.pem")
        assert stored is not None
        assert stored.data == b"one"
        assert stored.version

    def test_read_missing_object(self, target: PublishTarget) -> None:
        assert target.read("missing.pem") is None

    def test_rewrite_with_version(self, target: PublishTarget) -> None:
        target.write("root.pem", b"one", None)
        first = target.read("root.pem")
        assert first is not None
        target.write("root.pem", b"two", first.version)
        second = target.read("root.pem")
        assert second is not None
        assert second.data == b"two"
        assert second.version != first.version

    def test_write_stale_version(self, target: PublishTarget) -> None:
        self._needs_preconditions()
        target.write("root.pem", b"one", None)
        first = target.read("root.pem")
        assert first is not None
        target.write("root.pem", b"two", first.version)
        with pytest.raises(PreconditionFailedError):
            target.write("root.pem", b"three", first.version)
        stored = target.read("root.pem")
        assert stored is not None
        assert stored.data == b"two"

    def test_write_existing_must_not_exist(self, target: PublishTarget) -> None:
        self._needs_preconditions()
        target.write("root.pem", b"one", None)
        with pytest.raises(PreconditionFailedError):
            target.write("root.pem", b"two", None)
        stored = target.read("root.pem")
        assert stored is not None
        assert stored.data == b"one"

    def test_write_version_of_deleted(self, target: PublishTarget) -> None:
        self._needs_preconditions()
        target.write("root.pem", b"one", None)
        first = target.read("root.pem")
        assert first is not None
        target.delete("root.pem", first.version)
        with pytest.raises(PreconditionFailedError):
            target.write("root.pem", b"two", first.version)
        assert target.read("root.pem") is None

    def test_racing_writers_one_wins(self, target: PublishTarget, prefix: str) -> None:
        self._needs_preconditions()
        target.write("root.pem", b"start", None)
        start = target.read("root.pem")
        assert start is not None
        writers = [self.new_target(prefix) for _ in range(2)]
        barrier = threading.Barrier(len(writers))
        outcomes: dict[int, str] = {}

        def write(index: int) -> None:
            barrier.wait()
            try:
                writers[index].write("root.pem", b"writer %d" % index, start.version)
                outcomes[index] = "won"
            except PreconditionFailedError:
                outcomes[index] = "lost"

        threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for writer in writers:
            writer.close()
        assert sorted(outcomes.values()) == ["lost", "won"]
        winner = next(i for i, outcome in outcomes.items() if outcome == "won")
        stored = target.read("root.pem")
        assert stored is not None
        assert stored.data == b"writer %d" % winner

    def test_binary_round_trip(self, target: PublishTarget) -> None:
        target.write("bundle.der", BINARY, None)
        stored = target.read("bundle.der")
        assert stored is not None
        assert stored.data == BINARY

    def test_invalid_object_names(self, target: PublishTarget) -> None:
        for name in ("", "a/b.pem", ".hidden", "../up.pem"):
            with pytest.raises(ProviderPermanentError):
                target.write(name, b"x", None)

    # --- publish --------------------------------------------------------------------

    def test_publish_then_noop(self, target: PublishTarget) -> None:
        assert target.publish("root.pem", b"one") is True
        first = target.read("root.pem")
        assert first is not None
        assert target.publish("root.pem", b"one") is False
        second = target.read("root.pem")
        assert second is not None
        assert second.version == first.version

    def test_publish_replaces_content(self, target: PublishTarget) -> None:
        target.publish("root.pem", b"one")
        assert target.publish("root.pem", b"two") is True
        stored = target.read("root.pem")
        assert stored is not None
        assert stored.data == b"two"

    def test_publish_detects_mangled_write(self, target: PublishTarget) -> None:
        base = type(target)

        class Mangling(base):  # type: ignore[valid-type, misc]
            """Writes something other than what it was given."""

            def write(
                self, object_name: str, data: bytes, expected: str | None
            ) -> None:
                super().write(object_name, data + b"\n", expected)

        mangling = Mangling(target.name, target.settings, target.config_dir)
        try:
            with pytest.raises(PublishVerificationError, match=r"root\.pem"):
                mangling.publish("root.pem", b"one")
        finally:
            mangling.close()

    # --- delete and list ------------------------------------------------------------

    def test_delete_with_version(self, target: PublishTarget) -> None:
        target.write("root.pem", b"one", None)
        stored = target.read("root.pem")
        assert stored is not None
        target.delete("root.pem", stored.version)
        assert target.read("root.pem") is None
        assert target.list_objects() == []

    def test_delete_stale_version(self, target: PublishTarget) -> None:
        self._needs_preconditions()
        target.write("root.pem", b"one", None)
        first = target.read("root.pem")
        assert first is not None
        target.write("root.pem", b"two", first.version)
        with pytest.raises(PreconditionFailedError):
            target.delete("root.pem", first.version)
        assert target.read("root.pem") is not None

    def test_list_sorted_within_prefix(
        self, target: PublishTarget, prefix: str
    ) -> None:
        for name in ("b.pem", "a.pem", "c-chain.p7b", "a.json"):
            target.write(name, name.encode(), None)
        sibling = self.new_target(prefix + "-other")
        nested = self.new_target(prefix + "/nested")
        try:
            sibling.write("other.pem", b"x", None)
            nested.write("deep.pem", b"x", None)
            assert target.list_objects() == ["a.json", "a.pem", "b.pem", "c-chain.p7b"]
            assert sibling.list_objects() == ["other.pem"]
        finally:
            sibling.close()
            nested.close()

    def test_list_empty_prefix(self, target: PublishTarget) -> None:
        assert target.list_objects() == []

    def test_location_format(self, target: PublishTarget, prefix: str) -> None:
        pattern = self.location_pattern.replace("{prefix}", re.escape(prefix))
        assert re.fullmatch(pattern, target.location("root.pem"))

    # --- errors ---------------------------------------------------------------------

    def test_service_error_type(self) -> None:
        broken, expected = self.broken_target()
        try:
            with pytest.raises(expected) as raised:
                broken.write("root.pem", b"one", None)
            assert broken.name in str(raised.value)
        finally:
            broken.close()
