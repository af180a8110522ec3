"""paging: people, rotations and their overrides, escalation policies, integrations, incidents with their
timeline and the page each escalation step sent

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _times() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("phone", sa.String(32), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        *_times(),
    )
    op.create_table(
        "rotations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("shift_length", sa.Integer(), nullable=False),
        sa.Column("shift_unit", sa.String(8), nullable=False),
        sa.Column("handoff_time", sa.String(5), nullable=False),
        sa.Column("start_date", sa.Date(), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        *_times(),
    )
    op.create_table(
        "rotation_overrides",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "rotation_id", sa.String(40), sa.ForeignKey("rotations.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("person_id", sa.String(40), sa.ForeignKey("people.id", ondelete="CASCADE"), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rotation_overrides_rotation", "rotation_overrides", ["rotation_id", "ends_at"])
    op.create_table(
        "escalation_policies",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        *_times(),
    )
    op.create_table(
        "integrations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("policy_id", sa.String(40), sa.ForeignKey("escalation_policies.id"), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("silence_s", sa.Integer(), nullable=True),
        *_times(),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("integration_id", sa.String(40), sa.ForeignKey("integrations.id"), nullable=False),
        sa.Column("policy_id", sa.String(40), sa.ForeignKey("escalation_policies.id"), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("open_key", sa.String(64), nullable=True, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("severity", sa.String(32), nullable=True),
        sa.Column("alert_count", sa.Integer(), nullable=False),
        sa.Column("source_url", sa.String(2048), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("next_step_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("firing_since", sa.DateTime(timezone=True), nullable=True),
        *_times(),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(200), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_incidents_due", "incidents", ["state", "next_step_at"])
    op.create_index("ix_incidents_created", "incidents", ["created_at", "id"])
    op.create_table(
        "incident_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "incident_id", sa.String(40), sa.ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("who", sa.String(200), nullable=True),
        sa.Column("how", sa.String(32), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
    )
    op.create_index("ix_incident_events_incident", "incident_events", ["incident_id", "id"])
    op.create_table(
        "incident_pages",
        sa.Column(
            "incident_id", sa.String(40), sa.ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("round", sa.Integer(), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("alert_id", sa.String(40), nullable=True),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_incident_pages_alert_id", "incident_pages", ["alert_id"])


def downgrade() -> None:
    op.drop_index("ix_incident_pages_alert_id", table_name="incident_pages")
    op.drop_table("incident_pages")
    op.drop_index("ix_incident_events_incident", table_name="incident_events")
    op.drop_table("incident_events")
    op.drop_index("ix_incidents_created", table_name="incidents")
    op.drop_index("ix_incidents_due", table_name="incidents")
    op.drop_table("incidents")
    op.drop_table("integrations")
    op.drop_table("escalation_policies")
    op.drop_index("ix_rotation_overrides_rotation", table_name="rotation_overrides")
    op.drop_table("rotation_overrides")
    op.drop_table("rotations")
    op.drop_table("people")
