"""schedules keep their next run (next_run_at) and when the scheduler must hold them (arm_at: the next run
less the pre-synthesis lead), indexed: a start arms only what is near instead of every active schedule

Rows from before are left NULL: the first start computes theirs from the trigger and writes them back.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("next_run_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("arm_at", sa.DateTime(timezone=True)))
    op.create_index("ix_schedules_arm", "schedules", ["status", "arm_at"])


def downgrade() -> None:
    op.drop_index("ix_schedules_arm", "schedules")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("arm_at")
        batch.drop_column("next_run_at")
