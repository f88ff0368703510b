"""The reconciler finishing a key creation that a crash interrupted in AWS KMS.

aws-kms creates a key and then names it with an alias. A crash between the two
leaves a key found only by its tags; the next apply must record that key and
give it its alias, not create a second one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pkifed.config.loader import load_config
from pkifed.federation.runtime import Runtime
from pkifed.federation.store import Store
from pkifed.providers.algorithms import KeyAlgorithm
from pkifed.sync.plan import ActionKind
from pkifed.sync.reconcile import Reconciler
from tests.harness.moto_service import MotoKms


@pytest.fixture(scope="module")
def kms() -> Iterator[MotoKms]:
    with MotoKms() as service:
        yield service


def test_unaliased_key_recorded_and_named(
    kms: MotoKms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in kms.client_environment().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    document = {
        "version": 1,
        "name": "aws-crash",
        "providers": {
            "aws": {
                "type": "aws-kms",
                "region": kms.region,
                "endpoint_url": kms.endpoint_url,
            }
        },
        "authorities": {
            "root": {
                "provider": "aws",
                "key": "ec-p256",
                "subject": "CN=AWS Crash Root",
                "validity": "1y",
            }
        },
    }
    path = tmp_path / "federation.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    config = load_config(path)
    store = Store(config.state_url)
    store.initialise()
    try:
        with Runtime(config) as runtime:
            provider = runtime.provider("aws")
            orphan = provider._create_unaliased(  # type: ignore[attr-defined]
                "root", KeyAlgorithm.EC_P256
            )
            reconciler = Reconciler(config, store, runtime)
            plan = reconciler.plan()
            result = reconciler.apply(plan)
            named = [k for k in provider.list_keys() if k.name == "root"]
            again = reconciler.plan()
    finally:
        store.close()

    assert [a.kind for a in plan.actions][:1] == [ActionKind.RECORD_KEY]
    assert not result.failed
    assert len(named) == 1
    assert orphan["KeyId"] in named[0].uri
    assert again.empty
