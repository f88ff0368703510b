"""Add signed CRLs and revocations.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Times are ISO-8601 UTC strings such as 2026-01-31T12:00:00Z.
TIMESTAMP = sa.String(20)


def upgrade() -> None:
    op.create_table(
        "crls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("issuer_serial", sa.String(42), nullable=False),
        sa.Column("this_update", TIMESTAMP, nullable=False),
        sa.Column("next_update", TIMESTAMP, nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("signed_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("issuer", "number"),
    )
    op.create_index("ix_crls_issuer", "crls", ["issuer"])
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("authority", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(42), nullable=False, unique=True),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_revocations_authority", "revocations", ["authority"])
    op.create_index("ix_revocations_issuer", "revocations", ["issuer"])


def downgrade() -> None:
    op.drop_table("revocations")
    op.drop_table("crls")
