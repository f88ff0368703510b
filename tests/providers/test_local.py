"""The local provider: encrypted PEM files in a temporary directory."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa

from pkifed.errors import (
    AccessDeniedError,
    KeyNotFoundError,
    KeyUnusableError,
    ProviderPermanentError,
)
from pkifed.providers.algorithms import KeyAlgorithm, SignatureScheme
from pkifed.providers.base import KeyState, ProtectionLevel, ProviderContext
from pkifed.providers.local import LocalProvider, LocalSettings
from pkifed.providers.retry import RetrySettings
from tests.providers.conformance import (
    ProviderConformance,
    ProviderHarness,
    self_signed,
    unique_name,
)

PASSPHRASE_VARIABLE = "PKIFED_TEST_LOCAL_PASSPHRASE"
WRONG_VARIABLE = "PKIFED_TEST_LOCAL_WRONG_PASSPHRASE"
PASSPHRASE = "correct horse battery staple"
WRONG_PASSPHRASE = "wrong-passphrase-value"
FAST_RETRY = RetrySettings(attempts=2, base_delay=0.01, max_delay=0.02)


def make_provider(
    root: Path, variable: str = PASSPHRASE_VARIABLE, config_dir: Path | None = None
) -> LocalProvider:
    settings = LocalSettings.model_validate(
        {
            "type": "local",
            "path": str(root),
            "passphrase": f"${{env:{variable}}}",
            "retry": FAST_RETRY.model_dump(),
        }
    )
    return LocalProvider(settings, ProviderContext("keys", "conf", config_dir))


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(PASSPHRASE_VARIABLE, PASSPHRASE)
        monkeypatch.setenv(WRONG_VARIABLE, WRONG_PASSPHRASE)
        yield tmp_path_factory.mktemp("keystore")


@pytest.fixture(scope="module")
def provider(keystore: Path) -> LocalProvider:
    return make_provider(keystore)


def write_foreign_key(directory: Path, algorithm: KeyAlgorithm) -> Path:
    """Write an encrypted key file outside the federation's directory."""
    directory.mkdir(exist_ok=True)
    foreign = make_provider(directory)
    info = foreign.create_key(unique_name("foreign"), algorithm)
    return Path(info.uri.removeprefix("file:"))


class TestLocalConformance(ProviderConformance):
    @pytest.fixture
    def harness(self, keystore: Path, provider: LocalProvider) -> ProviderHarness:
        def create_foreign(algorithm: KeyAlgorithm) -> str:
            path = write_foreign_key(keystore / "foreign", algorithm)
            return LocalProvider.uri_of(path)

        return ProviderHarness(
            provider=provider,
            algorithms=[
                KeyAlgorithm.EC_P256,
                KeyAlgorithm.EC_P384,
                KeyAlgorithm.EC_P521,
                KeyAlgorithm.RSA_2048,
                KeyAlgorithm.ED25519,
            ],
            protection_level=ProtectionLevel.SOFTWARE,
            reopen=lambda: make_provider(keystore),
            create_foreign_key=create_foreign,
        )


def test_rsa_3072_key(provider: LocalProvider) -> None:
    info = provider.find_or_create_key(unique_name("rsa3072"), KeyAlgorithm.RSA_3072)
    scheme = SignatureScheme.default_for(KeyAlgorithm.RSA_3072)
    certificate = self_signed(provider.private_key(info.uri), scheme)

    assert info.algorithm is KeyAlgorithm.RSA_3072
    certificate.verify_directly_issued_by(certificate)


def test_key_file_mode_and_encryption(provider: LocalProvider) -> None:
    info = provider.find_or_create_key(unique_name("file"), KeyAlgorithm.EC_P256)
    path = Path(info.uri.removeprefix("file:"))
    pem = path.read_bytes()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, None)
    loaded = serialization.load_pem_private_key(pem, PASSPHRASE.encode())
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)


def test_uri_is_file_path(keystore: Path, provider: LocalProvider) -> None:
    name = unique_name("uri")
    info = provider.find_or_create_key(name, KeyAlgorithm.EC_P256)

    assert info.uri == f"file:{keystore.resolve()}/conf/{name}.pem"
    assert info.name == name


def test_wrong_passphrase_access_denied(
    keystore: Path, provider: LocalProvider
) -> None:
    info = provider.find_or_create_key(unique_name("pass"), KeyAlgorithm.EC_P256)
    wrong = make_provider(keystore, WRONG_VARIABLE)

    with pytest.raises(AccessDeniedError) as raised:
        wrong.public_key(info.uri)
    message = str(raised.value)
    assert WRONG_PASSPHRASE not in message
    assert PASSPHRASE not in message
    assert WRONG_VARIABLE in message
    assert info.uri in message


def test_cached_key_survives_file_loss(provider: LocalProvider) -> None:
    # Decrypted keys are cached per instance, so a key read once keeps
    # signing even after its file is gone.
    info = provider.find_or_create_key(unique_name("cache"), KeyAlgorithm.EC_P256)
    public = provider.public_key(info.uri)
    path = Path(info.uri.removeprefix("file:"))
    path.unlink()
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)

    certificate = self_signed(provider.private_key(info.uri, public), scheme)

    certificate.verify_directly_issued_by(certificate)
    assert not path.exists()


def test_missing_file_not_found(keystore: Path, provider: LocalProvider) -> None:
    uri = LocalProvider.uri_of(keystore / "conf" / "absent.pem")

    with pytest.raises(KeyNotFoundError):
        provider.describe_key(uri)


def test_relative_uri_rejected(provider: LocalProvider) -> None:
    with pytest.raises(KeyNotFoundError):
        provider.describe_key("file:conf/key.pem")


def test_unsafe_key_name_rejected(provider: LocalProvider) -> None:
    with pytest.raises(ProviderPermanentError):
        provider.find_or_create_key("../escape", KeyAlgorithm.EC_P256)


def test_create_existing_rejected(provider: LocalProvider) -> None:
    name = unique_name("twice")
    first = provider.create_key(name, KeyAlgorithm.EC_P256)

    with pytest.raises(ProviderPermanentError):
        provider.create_key(name, KeyAlgorithm.EC_P256)
    assert provider.public_key(first.uri) is not None


def test_second_writer_gets_existing(keystore: Path) -> None:
    # A second instance that generated a key for a name another instance
    # already wrote, as a racing process would, loses at the hard link and
    # returns the existing key.
    name = unique_name("race")
    first = make_provider(keystore)
    second = make_provider(keystore)
    created = first.create_key(name, KeyAlgorithm.EC_P256)
    found = second._create(name, KeyAlgorithm.EC_P256, exist_ok=True)

    assert found.uri == created.uri
    assert first.public_key(created.uri) == second.public_key(found.uri)
    leftovers = [p for p in (keystore / "conf").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_temporary_files_not_listed(keystore: Path, provider: LocalProvider) -> None:
    provider.find_or_create_key(unique_name("listed"), KeyAlgorithm.EC_P256)
    (keystore / "conf" / ".half-written.pem.0000.tmp").write_bytes(b"partial")

    names = [info.name for info in provider.list_keys()]

    assert all(name is not None and not name.startswith(".") for name in names)


def test_relative_path_uses_config_dir(tmp_path: Path) -> None:
    provider = make_provider(Path("keys"), config_dir=tmp_path)

    assert provider.root == (tmp_path / "keys").resolve()


def test_disabled_marker(provider: LocalProvider) -> None:
    info = provider.find_or_create_key(unique_name("disabled"), KeyAlgorithm.EC_P256)
    path = Path(info.uri.removeprefix("file:"))
    path.with_name(path.name + ".disabled").touch()
    scheme = SignatureScheme.default_for(KeyAlgorithm.EC_P256)

    assert provider.describe_key(info.uri).state is KeyState.DISABLED
    with pytest.raises(KeyUnusableError) as raised:
        self_signed(provider.private_key(info.uri), scheme)
    assert info.uri in str(raised.value)


@pytest.mark.parametrize(
    ("algorithm", "public_type"),
    [
        (KeyAlgorithm.ML_DSA_44, mldsa.MLDSA44PublicKey),
        (KeyAlgorithm.ML_DSA_65, mldsa.MLDSA65PublicKey),
        (KeyAlgorithm.ML_DSA_87, mldsa.MLDSA87PublicKey),
    ],
)
def test_ml_dsa_sign_message(
    provider: LocalProvider, algorithm: KeyAlgorithm, public_type: type
) -> None:
    info = provider.find_or_create_key(unique_name("mldsa"), algorithm)
    public = provider.public_key(info.uri)
    signature = provider.sign_message(info.uri, SignatureScheme(algorithm), b"message")

    assert isinstance(public, public_type)
    public.verify(signature, b"message")


def test_settings_hide_literal_passphrase() -> None:
    with pytest.raises(ValueError, match="secret reference") as raised:
        LocalSettings.model_validate(
            {"type": "local", "path": "/k", "passphrase": "hunter2-literal"}
        )
    assert "hunter2-literal" not in str(raised.value)
