"""index deliveries by (alert_id, state): whether an alert still has open deliveries is asked at every
outcome, and must not scan the whole alert

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_alert_state", "deliveries", ["alert_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_alert_state", "deliveries")
