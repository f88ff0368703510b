"""Alembic revisions of the state store's schema, and the code that runs them.

Users need no ``alembic.ini``: :func:`upgrade` builds the Alembic configuration in
code and runs the revisions on the connection it is given. To change the schema,
change the models in :mod:`pkifed.federation.store`, then add a file to
``versions/`` whose ``down_revision`` is the newest revision and whose
``upgrade()`` and ``downgrade()`` make the change. ``tests/federation/
test_store.py`` fails until the revisions produce exactly the models' schema.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

from pkifed.errors import StateError

logger = logging.getLogger(__name__)

# The revision that reproduces the schema pkifed created before it used Alembic:
# the tables below, with schema_info holding version 1.
BASELINE = "0001"
LEGACY_TABLES = ("keys", "certificates", "publications", "events", "schema_info")

# Key of the PostgreSQL advisory lock that makes replicas starting together
# upgrade one at a time. Any constant works as long as it stays the same.
ADVISORY_LOCK_KEY = 0x706B6966656400


def alembic_config(connection: Connection, metadata: MetaData) -> Config:
    """Build the Alembic configuration that runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = connection
    config.attributes["metadata"] = metadata
    return config


def head_revision() -> str:
    """The newest revision this release ships."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise StateError(
            f"no schema revisions found in {Path(__file__).parent / 'versions'}; "
            "reinstall pkifed"
        )
    return head


def upgrade(connection: Connection, metadata: MetaData, where: str) -> None:
    """Upgrade the database behind ``connection`` to the newest revision.

    A database made before Alembic (``schema_info`` version 1 and no
    ``alembic_version`` table) is checked against the baseline revision, stamped
    with it, and upgraded from there. The caller commits the transaction.

    Raises:
        StateError: the database is at a revision this release does not ship, or
            its tables do not match the schema they claim.
    """
    _lock(connection)
    config = alembic_config(connection, metadata)
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    current = MigrationContext.configure(connection).get_current_heads()
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = sorted(set(current) - known)
    if unknown:
        raise StateError(
            f"state store {where} is at schema revision {', '.join(unknown)}, "
            f"which this pkifed release does not ship (its newest is {head}); "
            "upgrade pkifed to the release that wrote the database"
        )
    if not current and inspect(connection).has_table("schema_info"):
        _adopt(connection, metadata, config, where)
        current = (BASELINE,)
    if current != (head,):
        logger.info(
            "state store %s: upgrading the schema from revision %s to %s",
            where,
            ", ".join(current) or "(empty)",
            head,
        )
    command.upgrade(config, "head")


def _lock(connection: Connection) -> None:
    """Hold a lock until the transaction ends, so concurrent upgrades queue."""
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
        )
    elif connection.dialect.name == "sqlite":
        # pysqlite opens transactions lazily before the first write, so the
        # write lock is taken explicitly, before the first read.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _adopt(
    connection: Connection, metadata: MetaData, config: Config, where: str
) -> None:
    """Stamp a database made before Alembic with the baseline revision."""
    versions = connection.execute(text("SELECT version FROM schema_info")).all()
    if [row[0] for row in versions] != [1]:
        raise StateError(
            f"state store {where} has no Alembic revision and schema_info holds "
            f"{[row[0] for row in versions]}; only version 1 can be adopted"
        )
    differences = _legacy_differences(connection, metadata)
    if differences:
        raise StateError(
            f"state store {where} claims schema version 1 but its tables differ "
            f"from it: {'; '.join(differences)}; repair the tables or start from "
            "an empty database"
        )
    command.stamp(config, BASELINE)
    logger.info(
        "state store %s: adopted the schema version 1 tables as revision %s",
        where,
        BASELINE,
    )


def _legacy_differences(connection: Connection, metadata: MetaData) -> list[str]:
    """Describe how the baseline tables in the database differ from the models.

    NOTE: this compares with today's models of those tables. A revision that
    changes one of them must give this check a frozen copy of the old shape.
    """
    legacy = MetaData()
    for name in LEGACY_TABLES:
        metadata.tables[name].to_metadata(legacy)
    context = MigrationContext.configure(connection)
    differences: list[Any] = compare_metadata(context, legacy)
    # Tables that are not pkifed's may share the database, so only changes to
    # the baseline tables count.
    return [
        str(difference)
        for difference in differences
        if not (isinstance(difference, tuple) and difference[0] == "remove_table")
    ]
