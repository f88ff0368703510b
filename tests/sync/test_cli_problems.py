"""How plan and apply print what is blocked."""

from __future__ import annotations

import pytest

from pkifed.sync import cli
from pkifed.sync.plan import PlanProblem


def unpublished(count: int) -> list[PlanProblem]:
    targets = ("files", "s3")
    return [
        PlanProblem(
            f"target {targets[index % 2]}: issuing-{index}.pem",
            f"not published: no certificate for issuing-{index} yet",
        )
        for index in range(count)
    ]


def test_few_unpublished_listed(capsys: pytest.CaptureFixture[str]) -> None:
    cause = PlanProblem("authority root", "provider 'hsm' (pkcs11): token missing")
    cli._print_problems([cause, *unpublished(3)])

    lines = capsys.readouterr().err.splitlines()
    assert (
        lines[0] == "  blocked: authority root: provider 'hsm' (pkcs11): token missing"
    )
    assert len(lines) == 4


def test_many_unpublished_summed_up(capsys: pytest.CaptureFixture[str]) -> None:
    cause = PlanProblem("authority root", "provider 'hsm' (pkcs11): token missing")
    crl = PlanProblem(
        "target files: root.crl", "not published: root has not signed a CRL yet"
    )
    revoked = PlanProblem(
        "target s3: trust.pem", "not published: the certificate of root is revoked"
    )
    cli._print_problems([cause, *unpublished(10), crl, revoked])

    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "  blocked: authority root: provider 'hsm' (pkcs11): token missing",
        "  blocked: target s3: trust.pem: not published: the certificate of root is "
        "revoked",
        "  blocked: 11 objects on targets files, s3 are not published until their "
        "authorities have certificates and CRLs; plan --json lists each",
    ]
