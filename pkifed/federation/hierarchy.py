"""The CA hierarchy as declared: ordering, key names and certificate profiles."""

from __future__ import annotations

from pkifed.config.names import build_name_constraints, parse_subject
from pkifed.config.schema import AuthorityConfig, FederationConfig
from pkifed.federation.certificates import CaProfile, distribution_points
from pkifed.providers.algorithms import SignatureScheme


def parents_first(model: FederationConfig) -> list[str]:
    """Authority names ordered so every parent precedes its children.

    Siblings keep the order of the configuration file. The configuration has
    been validated, so there are no cycles or unknown parents.
    """
    ordered: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        parent = model.authorities[name].parent
        if parent is not None:
            place(parent)
        placed.add(name)
        ordered.append(name)

    for name in model.authorities:
        place(name)
    return ordered


def ancestors(model: FederationConfig, name: str) -> list[str]:
    """List the authority's parent, grandparent and so on up to its root."""
    found = []
    parent = model.authorities[name].parent
    while parent is not None:
        found.append(parent)
        parent = model.authorities[parent].parent
    return found


def descendants(model: FederationConfig, name: str) -> list[str]:
    """List every authority below ``name``, parents before children."""
    return [other for other in parents_first(model) if name in ancestors(model, other)]


def key_name(authority: str, generation: int) -> str:
    """Return the name a provider files an authority's key under.

    The first key carries the authority's name; a re-key adds ``-g<N>``, so
    every generation has its own name and find-or-create stays idempotent.
    """
    return authority if generation == 1 else f"{authority}-g{generation}"


def signature_scheme(authority: AuthorityConfig) -> SignatureScheme:
    """Return the scheme this authority signs with, from its key and settings."""
    algorithm = authority.algorithm
    scheme = SignatureScheme.default_for(algorithm, authority.signature)
    if authority.hash is not None:
        scheme = SignatureScheme(algorithm, authority.hash, scheme.padding)
    return scheme


def ca_profile(
    authority: AuthorityConfig, parent: AuthorityConfig | None = None
) -> CaProfile:
    """What the authority's certificate must contain.

    ``parent`` is the issuing authority's configuration; its CRL distribution
    points go into the certificate it issues.
    """
    constraints = None
    if authority.name_constraints is not None:
        constraints = build_name_constraints(authority.name_constraints)
    points = None
    if parent is not None and parent.crl is not None:
        points = distribution_points(parent.crl.distribution_points)
    return CaProfile(
        subject=parse_subject(authority.subject),
        validity=authority.validity,
        path_length=authority.path_length,
        name_constraints=constraints,
        scheme=signature_scheme(authority),
        crl_distribution_points=points,
    )
