"""What is wrong with an existing SQLite MLflow store, read without changing it (before MLflow opens it).

MLflow runs its schema migration whenever a store lacks one of its tables; on a half-migrated store that
fails with "table ... already exists" after changing the file further. So the store is inspected first,
read-only, and a broken one is refused with what it holds and how to recover.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def mlflow_sqlite_problem(db: Path) -> str | None:
    """None for a missing, empty or complete store at the schema this MLflow expects; else what is wrong."""
    if not db.exists() or db.stat().st_size == 0:
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            versions = (
                [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
                if "alembic_version" in tables
                else []
            )
            held = _runs_held(con, tables)
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        return f"is not a readable SQLite database ({err})"
    if not {t for t in tables if not t.startswith("alembic_")}:
        return None  # empty: MLflow creates its tables
    expected, head = _expected_schema()
    missing = sorted(expected - tables)
    if len(versions) != 1:
        what = "has no alembic_version table" if "alembic_version" not in tables else f"has versions {versions}"
        return f"is half-migrated: it has MLflow tables but {what}{_missing(missing)}. {held}"
    if missing:
        return f"is half-migrated: schema version {versions[0]}{_missing(missing)}. {held}"
    if versions[0] != head:
        return (
            f"has schema version {versions[0]}, behind or ahead of this MLflow's {head}: made by another MLflow "
            f"version (back it up, then `mlflow db upgrade sqlite:///{db}`), or a migration was interrupted. {held}"
        )
    return None


def _expected_schema() -> tuple[set[str], str]:
    """The tables and the schema revision this MLflow expects (MLflow's own metadata; private but stable)."""
    from mlflow.store.db import utils

    return set(utils.Base.metadata.tables), utils._get_latest_schema_revision()


def _missing(missing: list[str]) -> str:
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    return f", tables missing: {', '.join(missing[:6])}{more}" if missing else ""


def _runs_held(con: sqlite3.Connection, tables: set[str]) -> str:
    """What the store holds, so the user knows what moving it aside sets apart."""
    if "runs" not in tables:
        return "It holds no runs table (no runs recorded)."
    try:
        rows = con.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
    except sqlite3.DatabaseError:
        return "Its runs table cannot be read."
    total = sum(n for _, n in rows)
    return f"It holds {total} runs ({', '.join(f'{n} {s}' for s, n in rows)})." if total else "It holds no runs."
