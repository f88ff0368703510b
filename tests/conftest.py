"""PostgreSQL for the tests that need one, and a state store URL for each backend.

Tests marked ``postgres`` take the ``postgres_url`` fixture. It points at the
server in ``PKIFED_TEST_POSTGRES_URL`` (default below) and gives each test a
schema of its own, dropped afterwards, so pytest-xdist workers never share
tables. When the server is unreachable the test is skipped with a reason that
starts with the test's name, because pytest's summary folds skips with the same
reason and location into one line, which would hide parametrized cases.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def postgres_server_url() -> URL:
    return make_url(os.environ.get("PKIFED_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))


@functools.cache
def postgres_unreachable() -> str | None:
    """Why the test server cannot be used, or None when it can."""
    url = postgres_server_url()
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        detail = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return (
            f"PostgreSQL at {url.render_as_string(hide_password=True)} is not "
            f"reachable ({detail}); start it, or set PKIFED_TEST_POSTGRES_URL to a "
            "SQLAlchemy URL of a database where the tests may create schemas"
        )
    except ImportError as error:
        return f"PostgreSQL driver missing ({error.name}); install pkifed[postgres]"
    finally:
        engine.dispose()
    return None


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped after the test."""
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(f"{request.node.name}: {reason}")
    server = postgres_server_url()
    schema = f"pkifed_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server, connect_args={"connect_timeout": 3})
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    query = dict(server.query)
    query["options"] = f"-csearch_path={schema}"
    try:
        yield server.set(query=query).render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state store URL on each backend: a SQLite file, then a PostgreSQL schema."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'state.db'}"
