"""Alembic environment: migrations run on the connection the service hands over (store/db.py)."""

from __future__ import annotations

from alembic import context

from announcer.store.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations with `announcer db upgrade` (it supplies the async engine's connection)"
    )
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
