"""call facts (who answered, how long machine detection took, how much of the message played of how long,
the keys pressed) and a delivery's voicemail rendering

Every new column is nullable and rows from before are left NULL: unknown, never a made-up value. Their
outcomes keep the meaning they had (a `heard` from before may have been a machine that let it play).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("answered_by", sa.String(24), nullable=True))
        batch.add_column(sa.Column("amd_ms", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("played_ms", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("message_ms", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("keys", sa.String(32), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("voicemail_text", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("voicemail_text")
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("keys")
        batch.drop_column("message_ms")
        batch.drop_column("played_ms")
        batch.drop_column("amd_ms")
        batch.drop_column("answered_by")
