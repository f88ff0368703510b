"""Run every pkifed benchmark and print one table of results.

Usage: python bench/run.py [--size small|full]

``full`` runs the sizes bench/README.md reports; ``small`` runs every
benchmark at a size that finishes in seconds, so CI keeps them working. Each
row compares pkifed with its reference measured in the same run, and checks
the row's target.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Run as a script, this file's directory is first on sys.path; the repository
# root is needed for ``bench.*`` and an uninstalled ``pkifed``.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import crl, footprint, latency, noop, signing
from bench.federation import passphrase_in_environment
from bench.report import Section, machine_description, render_table


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    signatures: int
    signing_rounds: int
    latency_authorities: int
    concurrencies: tuple[int, ...]
    noop_authorities: tuple[int, ...]
    noop_repetitions: int
    crl_entries: int
    start_runs: int


SIZES = {
    "full": Sizes(
        signatures=2000,
        signing_rounds=5,
        latency_authorities=1000,
        concurrencies=(16, 64, 256),
        noop_authorities=(10, 100, 1000),
        noop_repetitions=3,
        crl_entries=10_000,
        start_runs=7,
    ),
    "small": Sizes(
        signatures=100,
        signing_rounds=1,
        latency_authorities=24,
        concurrencies=(16, 64),
        noop_authorities=(10, 20, 40),
        noop_repetitions=1,
        crl_entries=500,
        start_runs=3,
    ),
}


def _run_all(directory: Path, sizes: Sizes) -> list[tuple[str, Section, float]]:
    """Run the benchmarks in order; return each one's section and duration."""
    results = []
    steps = [
        (
            "signing",
            lambda: signing.run(
                directory / "signing", sizes.signatures, sizes.signing_rounds
            ),
        ),
        (
            "latency",
            lambda: latency.run(
                directory / "latency", sizes.latency_authorities, sizes.concurrencies
            ),
        ),
        (
            "no-op",
            lambda: noop.run(
                directory / "noop", sizes.noop_authorities, sizes.noop_repetitions
            ),
        ),
        ("crl", lambda: crl.run(directory / "crl", sizes.crl_entries)),
        (
            "footprint",
            lambda: footprint.run(
                # The no-op benchmark left its largest federation converged.
                directory
                / "noop"
                / f"n{sizes.noop_authorities[-1]}"
                / "federation.yaml",
                sizes.noop_authorities[-1],
                sizes.start_runs,
            ),
        ),
    ]
    for name, step in steps:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        section = step()
        results.append((name, section, time.perf_counter() - start))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="full",
        help="full: the sizes bench/README.md reports; small: seconds, for CI.",
    )
    arguments = parser.parse_args(argv)
    sizes = SIZES[arguments.size]

    with passphrase_in_environment(), tempfile.TemporaryDirectory() as temporary:
        results = _run_all(Path(temporary), sizes)

    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"pkifed benchmarks, size {arguments.size}, {today}")
    for line in machine_description():
        print(line)
    print()
    print(render_table([row for _, section, _ in results for row in section.rows]))
    print()
    for name, section, seconds in results:
        print(f"{name} ({seconds:.1f} s):")
        for line in section.details:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
