"""alerts, deliveries, their events, opt-outs; calls link to the delivery attempt they carry

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), unique=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("template", sa.String(255)),
        sa.Column("template_text", sa.Text),
        sa.Column("variables", sa.JSON, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("callback_url", sa.String(2048)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alert_id", sa.String(40), sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("timezone", sa.String(64)),
        sa.Column("variables", sa.JSON, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Column("call_id", sa.Integer),
        sa.Column("call_sid", sa.String(34)),
        sa.Column("outcome", sa.String(24)),
        sa.Column("outcome_code", sa.Integer),
        sa.Column("outcome_reason", sa.String(400)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_deliveries_alert", "deliveries", ["alert_id", "position"])
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_deliveries_call_sid", "deliveries", ["call_sid"])
    op.create_table(
        "delivery_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "delivery_id", sa.Integer, sa.ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_delivery_events_delivery", "delivery_events", ["delivery_id", "id"])
    op.create_table(
        "opt_outs",
        sa.Column("phone", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivery_id", sa.Integer),
    )
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("delivery_id", sa.Integer))
        batch.add_column(sa.Column("attempt", sa.Integer))
        batch.create_foreign_key(
            "fk_calls_delivery", "deliveries", ["delivery_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_calls_delivery_id", ["delivery_id"])


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_delivery_id")
        batch.drop_constraint("fk_calls_delivery", type_="foreignkey")
        batch.drop_column("attempt")
        batch.drop_column("delivery_id")
    op.drop_table("opt_outs")
    op.drop_table("delivery_events")
    op.drop_table("deliveries")
    op.drop_table("alerts")
