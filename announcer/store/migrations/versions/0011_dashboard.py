"""dashboard_sessions: the signed-in dashboard browsers, shared by every process (`serve --workers N`);
and the indexes the dashboard's pages read by: alerts newest first, deliveries finished today

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("token_mark", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_dashboard_sessions_expires_at", "dashboard_sessions", ["expires_at"])
    op.create_index("ix_alerts_created", "alerts", ["created_at", "id"])
    op.create_index("ix_deliveries_finished", "deliveries", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_finished", table_name="deliveries")
    op.drop_index("ix_alerts_created", table_name="alerts")
    op.drop_index("ix_dashboard_sessions_expires_at", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
