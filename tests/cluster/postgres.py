"""A fresh PostgreSQL database for one test, dropped at its cleanup.

Replicas of one test share it; tests never do. Created and dropped through the
administrative database (``VIWORKS_TEST_POSTGRES_ADMIN``, default the local server's
``postgres`` database with trust authentication on 127.0.0.1), named
``viworks_test_<random>``, dropped ``WITH (FORCE)`` so that a replica killed with
connections open does not keep it alive.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from twisted.internet.threads import deferToThread

ADMIN_URL = os.environ.get(
    "VIWORKS_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@dataclass(frozen=True)
class Database:
    name: str
    url: str  # for the replicas' [backend] database


def unavailable() -> str | None:
    """Why no database can be created here (``None``: it can)."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"PostgreSQL is not reachable at {ADMIN_URL}: {e}".splitlines()[0]
    return None


def create_database() -> Database:
    """A new empty database (blocking)."""
    name = f"viworks_test_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, connect_timeout=10, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return Database(name, urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}")))


def drop_database(database: Database) -> None:
    """Drop it, closing whatever connections are left (blocking)."""
    with psycopg.connect(ADMIN_URL, connect_timeout=10, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database.name))
        )


async def fresh_database(testcase: Any) -> Database:
    """A new database for ``testcase``, dropped at its cleanup."""
    database = await deferToThread(create_database)
    testcase.addCleanup(deferToThread, drop_database, database)
    return database
