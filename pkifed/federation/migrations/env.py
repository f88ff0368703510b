"""Run pkifed's revisions on the connection that ``upgrade()`` passes in."""

from __future__ import annotations

from alembic import context

from pkifed.errors import StateError


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise StateError(
            "pkifed's schema revisions run through Store.initialise(), which "
            "passes a database connection; alembic.ini is not used"
        )
    context.configure(
        connection=connection,
        target_metadata=context.config.attributes.get("metadata"),
        # SQLite alters tables by copying them, which batch mode does for us.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
