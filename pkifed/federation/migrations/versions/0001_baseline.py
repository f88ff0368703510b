"""Create the schema pkifed used before Alembic: keys to events, version 1.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Times are ISO-8601 UTC strings such as 2026-01-31T12:00:00Z.
TIMESTAMP = sa.String(20)


def upgrade() -> None:
    op.create_table(
        "schema_info",
        sa.Column("version", sa.Integer(), primary_key=True),
    )
    op.create_table(
        "keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("authority", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("key_name", sa.String(128), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("protection_level", sa.String(16), nullable=False),
        sa.Column("adopted", sa.Boolean(), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("retired_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("authority", "generation"),
    )
    op.create_index("ix_keys_authority", "keys", ["authority"])
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("authority", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("key_id", sa.Integer(), sa.ForeignKey("keys.id"), nullable=False),
        sa.Column("issuer_serial", sa.String(42), nullable=True),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(95), nullable=False),
        sa.Column("not_before", TIMESTAMP, nullable=False),
        sa.Column("not_after", TIMESTAMP, nullable=False),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("superseded_at", TIMESTAMP, nullable=True),
        sa.UniqueConstraint("serial"),
    )
    op.create_index("ix_certificates_authority", "certificates", ["authority"])
    op.create_table(
        "publications",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("object_name", sa.String(255), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("target", "object_name"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.execute("INSERT INTO schema_info (version) VALUES (1)")


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("publications")
    op.drop_index("ix_certificates_authority", table_name="certificates")
    op.drop_table("certificates")
    op.drop_index("ix_keys_authority", table_name="keys")
    op.drop_table("keys")
    op.drop_table("schema_info")
