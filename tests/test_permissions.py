"""The permission files in docs/permissions grant exactly what the code calls.

Each cloud provider and target is parsed with ``ast``. Every method called on an
SDK client, or on an object the client returned, is looked up in a table of
the permissions it needs, and the union is compared with what the policy file
for that cloud grants. A new SDK call without a table entry fails, and so does
a permission that no call needs any more.

The table's sources, as read when it was written:

- AWS KMS: "Required permissions" of each operation in the API reference, and
  the Developer Guide: CreateKey with Tags also needs kms:TagResource
  ("Managing KMS key tags with API operations").
- Amazon S3: GetObject of a missing key returns 404 only to a caller with
  s3:ListBucket, and 403 otherwise (the SDK references of GetObject quote
  this). pkifed reads objects before they exist, so reads need both.
- Cloud KMS: "Permissions and roles" and the REST reference of
  asymmetricSign and getPublicKey.
- Cloud Storage: "IAM permissions for JSON methods", where objects.insert
  needs storage.objects.delete too when it replaces an object.
- Key Vault: the data actions of the built-in Key Vault Crypto User role and
  the access-policy-to-RBAC mapping used by Azure's KeyVault RBAC comparison
  tool (create, get and list map to keys/create/action and keys/read).
  GetDeletedKey needs the keys/get access policy permission (Azure SDK for
  .NET reference), so it counts as keys/read here.
- Blob Storage: the data actions of the Storage Blob Data Reader and
  Contributor roles.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PERMISSIONS_DIR = ROOT / "docs" / "permissions"

# Methods that return another SDK object rather than only data, so calls on
# their result are SDK calls too.
FACTORY_METHODS = frozenset(
    {"get_paginator", "bucket", "blob", "get_blob", "get_blob_client", "download_blob"}
)

# SDK methods that send no request of their own. A paginator sends the
# requests of the operation named in get_paginator, which is counted there.
LOCAL_METHODS = frozenset({"close", "paginate", "bucket", "blob", "get_blob_client"})

_KV = "Microsoft.KeyVault/vaults/keys"
_BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"

# SDK method (or paginated operation) to the permissions it needs, per client.
PERMISSIONS: dict[str, dict[str, frozenset[str]]] = {
    "aws-kms": {
        "create_alias": frozenset({"kms:CreateAlias"}),
        "create_key": frozenset({"kms:CreateKey", "kms:TagResource"}),
        "describe_key": frozenset({"kms:DescribeKey"}),
        "get_public_key": frozenset({"kms:GetPublicKey"}),
        "list_aliases": frozenset({"kms:ListAliases"}),
        "list_keys": frozenset({"kms:ListKeys"}),
        "list_resource_tags": frozenset({"kms:ListResourceTags"}),
        "schedule_key_deletion": frozenset({"kms:ScheduleKeyDeletion"}),
        "sign": frozenset({"kms:Sign"}),
    },
    "s3": {
        "delete_object": frozenset({"s3:DeleteObject"}),
        "get_object": frozenset({"s3:GetObject", "s3:ListBucket"}),
        "list_objects_v2": frozenset({"s3:ListBucket"}),
        "put_object": frozenset({"s3:PutObject"}),
    },
    "gcp-kms": {
        "asymmetric_sign": frozenset({"cloudkms.cryptoKeyVersions.useToSign"}),
        "create_crypto_key": frozenset({"cloudkms.cryptoKeys.create"}),
        "create_key_ring": frozenset({"cloudkms.keyRings.create"}),
        "get_crypto_key": frozenset({"cloudkms.cryptoKeys.get"}),
        "get_crypto_key_version": frozenset({"cloudkms.cryptoKeyVersions.get"}),
        "get_key_ring": frozenset({"cloudkms.keyRings.get"}),
        "get_public_key": frozenset({"cloudkms.cryptoKeyVersions.viewPublicKey"}),
        "list_crypto_key_versions": frozenset({"cloudkms.cryptoKeyVersions.list"}),
        "list_crypto_keys": frozenset({"cloudkms.cryptoKeys.list"}),
    },
    "gcs": {
        "delete": frozenset({"storage.objects.delete"}),
        "download_as_bytes": frozenset({"storage.objects.get"}),
        "get_blob": frozenset({"storage.objects.get"}),
        "list_blobs": frozenset({"storage.objects.list"}),
        "upload_from_string": frozenset(
            {"storage.objects.create", "storage.objects.delete"}
        ),
    },
    "azure-keyvault": {
        "create_ec_key": frozenset({f"{_KV}/create/action"}),
        "create_rsa_key": frozenset({f"{_KV}/create/action"}),
        "get_deleted_key": frozenset({f"{_KV}/read"}),
        "get_key": frozenset({f"{_KV}/read"}),
        "list_properties_of_key_versions": frozenset({f"{_KV}/read"}),
        "list_properties_of_keys": frozenset({f"{_KV}/read"}),
        "sign": frozenset({f"{_KV}/sign/action"}),
    },
    "azure-blob": {
        "delete_blob": frozenset({f"{_BLOBS}/delete"}),
        "download_blob": frozenset({f"{_BLOBS}/read"}),
        "list_blobs": frozenset({f"{_BLOBS}/read"}),
        "readall": frozenset({f"{_BLOBS}/read"}),
        "upload_blob": frozenset({f"{_BLOBS}/write"}),
    },
}


@dataclass(frozen=True)
class SdkSource:
    """A module that calls one SDK client, and how to recognise that client.

    ``roots`` are regular expressions matched against the source text of an
    expression (``ast.unparse``); a match makes it an SDK object. ``callbacks``
    match functions whose function arguments receive the client as their
    first parameter, such as the gcp-kms provider's ``self._call``.
    """

    path: str
    client: str
    roots: tuple[str, ...]
    callbacks: tuple[str, ...] = ()
    boto3_service: str | None = None


SOURCES = {
    "aws": (
        SdkSource(
            "pkifed/providers/aws.py",
            "aws-kms",
            (r"\._client\(\)$", r"\._kms$"),
            boto3_service="kms",
        ),
        SdkSource(
            "pkifed/providers/targets/s3.py",
            "s3",
            (r"\._client\(\)$", r"\._s3_client$"),
            boto3_service="s3",
        ),
    ),
    "gcp": (
        SdkSource(
            "pkifed/providers/gcp.py",
            "gcp-kms",
            (r"\._client\(\)$", r"\._kms_client$"),
            callbacks=(r"\._call$", r"\._create$"),
        ),
        SdkSource(
            "pkifed/providers/targets/gcs.py",
            "gcs",
            (r"\._bucket\(\)$", r"\._storage_client$"),
        ),
    ),
    "azure": (
        SdkSource(
            "pkifed/providers/azure.py",
            "azure-keyvault",
            (r"\._keys$", r"\._crypto_client\("),
        ),
        SdkSource(
            "pkifed/providers/targets/azure_blob.py",
            "azure-blob",
            (r"\._container\(\)$", r"\._container_client$"),
        ),
    ),
}
ALL_SOURCES = [source for sources in SOURCES.values() for source in sources]


@dataclass(frozen=True)
class SdkCall:
    """One SDK method called in a source file."""

    method: str
    line: int


# --- finding SDK calls -----------------------------------------------------------


@dataclass
class _Scope:
    source: SdkSource
    names: set[str] = field(default_factory=set)

    def is_sdk(self, node: ast.expr) -> bool:
        text = ast.unparse(node)
        if any(re.search(pattern, text) for pattern in self.source.roots):
            return True
        if isinstance(node, ast.Name):
            return node.id in self.names
        if isinstance(node, ast.Attribute):
            return self.is_sdk(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.attr in FACTORY_METHODS and self.is_sdk(node.func.value)
        return False


def _target_names(target: ast.expr) -> Iterator[str]:
    for node in ast.walk(target):
        if isinstance(node, ast.Name):
            yield node.id


def _callback_parameters(function: ast.AST, scope: _Scope) -> set[str]:
    """Return the first parameters of functions passed to a callback call."""
    nested = {
        node.name: node
        for node in ast.walk(function)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    found: set[str] = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        callee = ast.unparse(node.func)
        if not any(re.search(p, callee) for p in scope.source.callbacks):
            continue
        for argument in node.args:
            target: ast.AST | None = argument
            if isinstance(argument, ast.Name):
                target = nested.get(argument.id)
            if isinstance(target, ast.Lambda | ast.FunctionDef) and target.args.args:
                found.add(target.args.args[0].arg)
    return found


def _bind_names(function: ast.AST, scope: _Scope) -> None:
    """Add every name assigned an SDK object in ``function`` to the scope."""
    changed = True
    while changed:
        changed = False
        for node in ast.walk(function):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = (
                    node.targets if isinstance(node, ast.Assign) else [node.target]
                )
                value = node.value
            elif isinstance(node, ast.For):
                targets, value = [node.target], node.iter
            else:
                continue
            if not scope.is_sdk(value):
                continue
            for target in targets:
                new = set(_target_names(target)) - scope.names
                scope.names |= new
                changed = changed or bool(new)


def _calls_in(function: ast.AST, source: SdkSource) -> Iterator[SdkCall]:
    scope = _Scope(source)
    scope.names |= _callback_parameters(function, scope)
    _bind_names(function, scope)
    for node in ast.walk(function):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if not scope.is_sdk(node.func.value):
            continue
        method = node.func.attr
        if method == "get_paginator":
            argument = node.args[0] if node.args else None
            if not isinstance(argument, ast.Constant):
                raise AssertionError(
                    f"{source.path}:{node.lineno}: get_paginator needs a literal "
                    "operation name so its permission can be looked up"
                )
            method = str(argument.value)
        yield SdkCall(method, node.lineno)


def _scopes(tree: ast.Module) -> Iterator[ast.AST]:
    """Yield each module-level function and method, and the module's own code."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            yield from (
                member
                for member in node.body
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
            )
        else:
            yield node


def sdk_calls(source: SdkSource, text: str) -> list[SdkCall]:
    """Return every SDK method call in ``text``, the source of ``source.path``."""
    tree = ast.parse(text, filename=source.path)
    calls = [call for scope in _scopes(tree) for call in _calls_in(scope, source)]
    return sorted(set(calls), key=lambda call: (call.line, call.method))


def boto3_services(text: str) -> set[str]:
    """Return the service names passed to ``<session>.client(...)``."""
    found = set()
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "client"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
    return found


def needed_permissions(
    source: SdkSource, calls: Iterable[SdkCall]
) -> tuple[set[str], list[str]]:
    """Return the permissions ``calls`` need, and the calls the table lacks."""
    table = PERMISSIONS[source.client]
    needed: set[str] = set()
    unknown: list[str] = []
    for call in calls:
        if call.method in LOCAL_METHODS:
            continue
        if call.method not in table:
            unknown.append(f"{source.path}:{call.line}: {call.method}")
            continue
        needed |= table[call.method]
    return needed, unknown


def cloud_needs(cloud: str) -> set[str]:
    needed: set[str] = set()
    for source in SOURCES[cloud]:
        text = (ROOT / source.path).read_text(encoding="utf-8")
        found, _unknown = needed_permissions(source, sdk_calls(source, text))
        needed |= found
    return needed


# --- reading the permission files ------------------------------------------------


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def aws_statements() -> list[dict[str, object]]:
    document = json.loads((PERMISSIONS_DIR / "aws-iam-policy.json").read_text())
    statements: list[dict[str, object]] = document["Statement"]
    return statements


def aws_granted() -> set[str]:
    granted: set[str] = set()
    for statement in aws_statements():
        assert statement["Effect"] == "Allow", statement
        granted |= set(_as_list(statement["Action"]))  # type: ignore[arg-type]
    return granted


def gcp_granted() -> set[str]:
    role = yaml.safe_load((PERMISSIONS_DIR / "gcp-role.yaml").read_text())
    return set(role["includedPermissions"])


def azure_role() -> dict[str, list[str]]:
    role: dict[str, list[str]] = json.loads(
        (PERMISSIONS_DIR / "azure-role.json").read_text()
    )
    return role


GRANTED = {
    "aws": aws_granted,
    "gcp": gcp_granted,
    "azure": lambda: set(azure_role()["DataActions"]),
}
FILES = {
    "aws": "docs/permissions/aws-iam-policy.json",
    "gcp": "docs/permissions/gcp-role.yaml",
    "azure": "docs/permissions/azure-role.json",
}


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: s.client)
def test_every_sdk_call_in_table(source: SdkSource) -> None:
    text = (ROOT / source.path).read_text(encoding="utf-8")
    calls = sdk_calls(source, text)
    _needed, unknown = needed_permissions(source, calls)

    assert calls, f"no SDK call found in {source.path}; check SOURCES[...].roots"
    assert unknown == [], (
        f"SDK calls without a permission in tests/test_permissions.py: {unknown}; "
        f"add each to PERMISSIONS[{source.client!r}] after checking the cloud's "
        "documentation, then update docs/permissions"
    )


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: s.client)
def test_table_entries_still_called(source: SdkSource) -> None:
    text = (ROOT / source.path).read_text(encoding="utf-8")
    called = {call.method for call in sdk_calls(source, text)}
    stale = sorted(set(PERMISSIONS[source.client]) - called)

    assert stale == [], f"{source.path} no longer calls {stale}; remove them"


@pytest.mark.parametrize("cloud", sorted(SOURCES))
def test_policy_grants_every_needed(cloud: str) -> None:
    missing = sorted(cloud_needs(cloud) - GRANTED[cloud]())

    assert missing == [], f"{FILES[cloud]} lacks {missing}, which the code needs"


@pytest.mark.parametrize("cloud", sorted(SOURCES))
def test_policy_grants_nothing_extra(cloud: str) -> None:
    extra = sorted(GRANTED[cloud]() - cloud_needs(cloud))

    assert extra == [], f"{FILES[cloud]} grants {extra}, which no call needs"


@pytest.mark.parametrize(
    "source", [s for s in ALL_SOURCES if s.boto3_service], ids=lambda s: s.client
)
def test_boto3_clients_known(source: SdkSource) -> None:
    # A client of another AWS service would need permissions this test cannot
    # see, because its calls do not go through the recognised client.
    text = (ROOT / source.path).read_text(encoding="utf-8")

    assert boto3_services(text) == {source.boto3_service}


def test_aws_wildcard_resources_minimal() -> None:
    # KMS documents "*" as the resource only for operations on no particular
    # key, such as CreateKey and ListAliases (Developer Guide, "Specifying KMS
    # keys in IAM policy statements"). Everything else names keys or aliases.
    unscoped = set()
    for statement in aws_statements():
        if statement["Resource"] == "*":
            unscoped |= set(_as_list(statement["Action"]))  # type: ignore[arg-type]

    assert unscoped == {"kms:CreateKey", "kms:ListAliases", "kms:ListKeys"}


def test_aws_key_actions_need_federation_tag() -> None:
    key_actions = {"kms:DescribeKey", "kms:GetPublicKey", "kms:Sign"}
    for statement in aws_statements():
        actions = set(_as_list(statement["Action"]))  # type: ignore[arg-type]
        if not actions & key_actions:
            continue
        condition = statement.get("Condition", {})

        assert condition == {
            "StringEquals": {"aws:ResourceTag/pkifed:federation": "FEDERATION"}
        }, statement["Sid"]


def test_azure_role_has_no_control_plane_actions() -> None:
    role = azure_role()

    assert role["Actions"] == []
    assert role["NotDataActions"] == []


# A call pkifed does not make, added to a copy of each source, must be caught.
_INJECTED = {
    "aws-kms": "def _injected(p):\n    p._client().tag_resource(KeyId='k', Tags=[])\n",
    "s3": "def _injected(t):\n    t._client().copy_object(Bucket='b', Key='k')\n",
    "gcp-kms": (
        "def _injected(p):\n"
        "    p._call('x', 'y', lambda c: c.update_crypto_key(request={}))\n"
    ),
    "gcs": "def _injected(t):\n    t._bucket().blob('k').rewrite(None)\n",
    "azure-keyvault": "def _injected(p):\n    p._keys.begin_delete_key('k')\n",
    "azure-blob": "def _injected(t):\n    t._container().delete_container()\n",
}


@pytest.mark.parametrize("source", ALL_SOURCES, ids=lambda s: s.client)
def test_added_call_detected(source: SdkSource) -> None:
    text = (ROOT / source.path).read_text(encoding="utf-8")
    changed = text + "\n\n" + _INJECTED[source.client]

    _needed, unknown = needed_permissions(source, sdk_calls(source, changed))

    assert len(unknown) == 1
    assert unknown[0].startswith(f"{source.path}:")
