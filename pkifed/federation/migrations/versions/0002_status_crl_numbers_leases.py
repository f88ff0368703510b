"""Add object status, CRL numbers and leases, and set schema_info to 2.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

# Times are ISO-8601 UTC strings such as 2026-01-31T12:00:00Z.
TIMESTAMP = sa.String(20)


def upgrade() -> None:
    op.create_table(
        "object_status",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("last_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("next_retry_at", TIMESTAMP, nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_table(
        "crl_numbers",
        sa.Column("issuer", sa.String(64), primary_key=True),
        sa.Column("number", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", TIMESTAMP, nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
    )
    # pkifed releases before Alembic reject any version but 1, so they refuse
    # this database instead of using it without the new tables.
    op.execute("UPDATE schema_info SET version = 2")


def downgrade() -> None:
    op.execute("UPDATE schema_info SET version = 1")
    op.drop_table("leases")
    op.drop_table("crl_numbers")
    op.drop_table("object_status")
