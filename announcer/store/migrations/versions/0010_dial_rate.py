"""dial_rate: the account's next free instant for a call, shared by every process (deliveries/dial_rate.py)

PostgreSQL only, and UNLOGGED: a row is rebuilt by the next reservation, so it needs no WAL (a reservation
then waits for no disk flush) and a crash that empties it loses nothing. SQLite is one process: its
dispatcher's own token bucket is the rate, and there is nothing to share.

Revision ID: 0010
Revises: 0008 (0009, the outbox, once it is merged)
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_table(
        "dial_rate",
        sa.Column("account", sa.String(64), primary_key=True),  # the Twilio account SID
        # seconds since the epoch on the database's clock: when the account's next call may be placed
        sa.Column("next_at", sa.Float(precision=53), nullable=False),
        # the last TWILIO_CPS slots handed out, oldest first (a late dial's: when it left)
        sa.Column("recent", postgresql.ARRAY(sa.Float(precision=53)), nullable=False, server_default="{}"),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS dial_rate")
