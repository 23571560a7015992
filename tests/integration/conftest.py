from __future__ import annotations

import uuid

import pytest

from tests.helpers import make_app

PG = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path, seed=5)


@pytest.fixture
def pg_db():
    """A fresh PostgreSQL database on 127.0.0.1:5432, dropped afterwards. Yields its DSN."""
    psycopg = pytest.importorskip("psycopg")
    name = f"bk_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - the service runs on every machine and in CI
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is required: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    created = [name]

    def make(suffix: str) -> str:
        n = f"{name}_{suffix}"
        admin.execute(f'CREATE DATABASE "{n}"')
        created.append(n)
        return f"{PG}/{n}"

    try:
        yield {"dsn": f"{PG}/{name}", "name": name, "make": make}
    finally:
        for n in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def dbs(pg_db):
    """``make(suffix)`` creates a database on the local PostgreSQL and returns its DSN (``pg_db``'s; all dropped)."""
    return pg_db["make"]
