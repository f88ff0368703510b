"""Partial outages: one provider or target fails, the rest is still reconciled.

Faults are injected through the local services (the fakes' fail and throttle,
moto's KMS proxy, the object stores' fault proxies) while ``pkifed apply`` runs
as a separate process. Each case checks that the run exits non-zero, names
what failed and states that it will be retried on the next run. It also checks
that everything independent of the failure was done, and that the next apply
converges once the fault is cleared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.federation import (
    AZURITE_MISSING,
    FederationDirectory,
    LocalServices,
    local_services,
    output_of,
)

pytestmark = pytest.mark.slow

CLOUDS = {"aws": "aws-kms", "gcp": "gcp-kms", "azure": "azure-keyvault"}
OBJECT_STORES = {"s3": "s3", "gcs": "gcs", "blob": "azure-blob"}
RETRIED = "will be retried on the next run"
# A failure count far above the requests of any run in this module, so a
# fault lasts until the test clears it.
PERSISTENT = 10_000


@pytest.fixture(scope="module")
def services() -> Iterator[LocalServices]:
    with local_services() as running:
        yield running


@pytest.fixture
def cleared(services: LocalServices) -> Iterator[Callable[[], None]]:
    """A function that clears every injected fault, called again after the test."""

    def clear() -> None:
        services.kms.clear()
        services.cloud_kms.clear()
        services.key_vault.clear()
        services.gcs.clear()
        assert services.s3.proxy is not None
        services.s3.proxy.clear()
        if services.azurite is not None and services.azurite.proxy is not None:
            services.azurite.proxy.clear()

    yield clear
    clear()


def authority(
    provider: str, parent: str | None, path_length: int, publish: list[str]
) -> dict[str, object]:
    entry: dict[str, object] = {
        "provider": provider,
        "key": "ec-p256",
        "subject": f"CN=Outage {provider} {path_length}",
        "validity": "10y" if parent is None else "5y",
        "path_length": path_length,
        "publish": publish,
    }
    if parent is not None:
        entry["parent"] = parent
    return entry


def lines_with(text: str, *parts: str) -> list[str]:
    return [line for line in text.splitlines() if all(p in line for p in parts)]


# --- a provider fails while signing -------------------------------------------------


def signing_federation(directory: Path, services: LocalServices) -> FederationDirectory:
    """A root on disk, a CA in each cloud, and under each an issuing CA on disk.

    Each issuing CA's certificate is signed by its parent's key in a cloud, so
    a cloud that cannot sign fails exactly one issuing CA.
    """
    federation = FederationDirectory(directory, services)
    federation.add_provider("disk", "local")
    federation.add_target("out", "file")
    authorities = federation.document["authorities"]
    authorities["root"] = authority("disk", None, 2, [])
    for cloud, provider_type in CLOUDS.items():
        federation.add_provider(cloud, provider_type)
        authorities[f"ca-{cloud}"] = authority(cloud, "root", 1, [])
        authorities[f"issuing-{cloud}"] = authority("disk", f"ca-{cloud}", 0, ["out"])
    federation.document["bundles"] = {
        "trust": {"authorities": ["root"], "targets": ["out"]}
    }
    return federation


# The service's error code that each cloud's injected fault returns.
SIGNING_ERRORS = {
    "aws": "KMSInternalException",
    "gcp": "RESOURCE_EXHAUSTED",
    "azure": "HTTP 500",
}


def break_signing(services: LocalServices, cloud: str) -> None:
    if cloud == "aws":
        services.kms.fail(PERSISTENT)
    elif cloud == "gcp":
        services.cloud_kms.throttle(PERSISTENT)
    else:
        services.key_vault.fail(PERSISTENT)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_signing_outage_fails_one_child(
    services: LocalServices,
    cleared: Callable[[], None],
    tmp_path: Path,
    cloud: str,
) -> None:
    federation = signing_federation(tmp_path, services)
    out = tmp_path / "out"

    break_signing(services, cloud)
    failed = federation.run("apply")
    published = sorted(p.name for p in out.glob("*.pem"))
    cleared()
    resumed = federation.run("apply")
    planned = federation.run("plan", "--detailed-exitcode")

    assert failed.returncode == 1, output_of(failed)
    failures = lines_with(failed.stdout, "[FAILED]")
    assert len(failures) == 1, output_of(failed)
    assert f"issue-certificate authority issuing-{cloud}:" in failures[0]
    assert f"provider {cloud!r}" in failures[0]
    assert SIGNING_ERRORS[cloud] in failures[0]
    assert RETRIED in failures[0]
    # Only what depends on the failed certificate is held back.
    assert len(lines_with(failed.stdout, "[skipped]", f"issuing-{cloud}")) == 2
    for sibling in sorted(set(CLOUDS) - {cloud}):
        assert lines_with(failed.stdout, "[ok] issue-certificate", f"issuing-{sibling}")
    expected = ["trust.pem"]
    for sibling in sorted(set(CLOUDS) - {cloud}):
        expected += [f"issuing-{sibling}-chain.pem", f"issuing-{sibling}.pem"]
    assert published == sorted(expected)

    assert resumed.returncode == 0, output_of(resumed)
    assert (out / f"issuing-{cloud}.pem").exists()
    assert planned.returncode == 0, output_of(planned)


# --- a target fails while publishing ------------------------------------------------


def publishing_federation(
    directory: Path, services: LocalServices
) -> FederationDirectory:
    """A root and an issuing CA on disk, published to every target type."""
    federation = FederationDirectory(directory, services)
    federation.add_provider("disk", "local")
    targets = ["out"]
    federation.add_target("out", "file")
    for name, target_type in OBJECT_STORES.items():
        if target_type == "azure-blob" and services.azurite is None:
            continue
        federation.add_target(name, target_type)
        targets.append(name)
    authorities = federation.document["authorities"]
    authorities["root"] = authority("disk", None, 1, [])
    authorities["issuing"] = authority("disk", "root", 0, targets)
    federation.document["bundles"] = {
        "trust": {"authorities": ["root"], "targets": targets}
    }
    return federation


def break_target(services: LocalServices, target: str) -> None:
    if target == "s3":
        services.s3.fail(PERSISTENT)
    elif target == "gcs":
        services.gcs.fail(PERSISTENT)
    else:
        assert services.azurite is not None
        services.azurite.fail(PERSISTENT)


@pytest.mark.parametrize("target", sorted(OBJECT_STORES))
def test_publish_outage_spares_other_targets(
    services: LocalServices,
    cleared: Callable[[], None],
    tmp_path: Path,
    target: str,
) -> None:
    if target == "blob" and services.azurite is None:
        pytest.skip(AZURITE_MISSING)
    federation = publishing_federation(tmp_path, services)
    others = [t for t in federation.document["targets"] if t != target]

    break_target(services, target)
    failed = federation.run("apply")
    published = {t: federation.read_object(t, "trust.pem") for t in others}
    cleared()
    resumed = federation.run("apply")

    assert failed.returncode == 1, output_of(failed)
    failures = lines_with(failed.stdout, "[FAILED]")
    # The bundle, the certificate and the chain fail on this target only.
    assert len(failures) == 3, output_of(failed)
    for line in failures:
        assert f"publish target {target}:" in line
        assert RETRIED in line
    for other in others:
        assert lines_with(failed.stdout, f"[ok] publish target {other}: trust.pem")
        assert published[other] == published["out"], other

    assert resumed.returncode == 0, output_of(resumed)
    assert federation.read_object(target, "trust.pem") == published["out"]


# --- a target is unreachable at plan time -------------------------------------------


def test_unreachable_target_blocked_in_plan(
    services: LocalServices, cleared: Callable[[], None], tmp_path: Path
) -> None:
    federation = publishing_federation(tmp_path, services)
    converged = federation.run("apply")
    assert converged.returncode == 0, output_of(converged)
    bundle = tmp_path / "out" / "trust.pem"
    original = bundle.read_bytes()
    bundle.write_bytes(original + b"tampered\n")

    services.s3.fail(PERSISTENT)
    planned = federation.run("plan")
    applied = federation.run("apply")
    repaired = bundle.read_bytes()
    cleared()
    again = federation.run("plan", "--detailed-exitcode")

    # Every object on the unreachable target is blocked, and nothing else.
    blocked = lines_with(planned.stderr, "blocked:")
    assert planned.returncode == 1, output_of(planned)
    assert len(blocked) == 3, output_of(planned)
    for line in blocked:
        assert "blocked: target s3:" in line
        assert "target s3 is unavailable" in line
        assert RETRIED in line
    assert re.search(r"publish\s+target out: trust\.pem: drifted", planned.stdout)

    # apply repairs what it can reach, and still exits non-zero for the rest.
    assert applied.returncode == 1, output_of(applied)
    assert lines_with(applied.stdout, "[ok] publish target out: trust.pem")
    assert len(lines_with(applied.stderr, "blocked: target s3:")) == 3
    assert repaired == original

    assert again.returncode == 0, output_of(again)
