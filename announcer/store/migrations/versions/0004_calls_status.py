"""index calls by (status, updated_at): open calls are counted before every claim and swept for quiet
ones; without it each of those scans every call ever made

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_calls_status_updated", "calls", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_calls_status_updated", "calls")
