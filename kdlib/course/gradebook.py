"""The gradebook's database: which URL ``kdlib grade --db`` means, and whether it can be used.

nbgrader keeps its gradebook in any database SQLAlchemy reaches. ``kdlib grade`` checks the URL
before grading anything, so that a typo, an unreachable server or an unwritable file is one
line naming the host or the path (exit status 2), not a traceback after the first submission.

- ``sqlite:///PATH`` (the default, ``<out>/gradebook.db``): one grader at a time. The folder is
  created; the file, or the folder for a new one, must be writable.
- ``postgresql://USER@HOST[:PORT]/DB``: several graders, or ``kdlib grade --jobs``. The
  ``course`` extra installs the psycopg (3) driver; a plain ``postgresql://`` URL is read as
  ``postgresql+psycopg://`` when the older psycopg2 is not installed. (nbgrader's own tools,
  reading the same URL from ``nbgrader_config.py``, need the explicit ``postgresql+psycopg://``
  in that case.)
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

__all__ = [
    "GradebookError",
    "check_database",
    "load_shards",
    "parse_shard",
    "registration_lock",
    "resolve_db_url",
    "shard_of",
    "store_shard",
]

CONNECT_TIMEOUT = 5  # seconds to reach a database server


class GradebookError(ValueError):
    """The gradebook's database cannot be used; the message is one line for the user."""


def resolve_db_url(db_url: str | None, out: Path) -> str:
    """The URL to use: ``db_url``, or the SQLite file ``<out>/gradebook.db``. A PostgreSQL URL
    without a driver gets the installed one. Raises GradebookError for a malformed URL."""
    if not db_url:
        return "sqlite:///" + str(Path(out) / "gradebook.db")
    url = _parse(db_url)
    if url.drivername in ("postgresql", "postgres"):
        if find_spec("psycopg2") is None and find_spec("psycopg") is not None:
            url = url.set(drivername="postgresql+psycopg")
        else:
            url = url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)
    return db_url


def check_database(db_url: str) -> None:
    """Make sure the gradebook at ``db_url`` can be opened for writing (creating an SQLite
    file's folder); raise GradebookError with a one-line reason naming the path or host."""
    url = _parse(db_url)
    if url.get_backend_name() == "sqlite":
        _check_sqlite(url)
        return
    _check_server(url)


def _parse(db_url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(db_url)
    except ArgumentError:
        raise GradebookError(
            f"--db {db_url!r} is not a database URL (expected e.g. sqlite:///PATH or "
            "postgresql://USER@HOST/DB)"
        ) from None


def _check_sqlite(url) -> None:
    database = url.database
    if not database or database == ":memory:":
        raise GradebookError("--db: an in-memory SQLite gradebook would be lost: give a file")
    path = Path(database).expanduser().resolve()
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GradebookError(
            f"cannot create the gradebook's folder {folder}: {exc.strerror or exc}"
        ) from None
    if path.is_dir():
        raise GradebookError(f"the SQLite gradebook {path} is a folder, not a file")
    target = path if path.exists() else folder
    # SQLite also writes a journal beside the file: the folder must be writable too
    for place in {target, folder}:
        if not os.access(place, os.W_OK):
            raise GradebookError(
                f"cannot write the SQLite gradebook at {path}: {place} is not writable"
            )


def _check_server(url) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    where = f"{url.host or 'localhost'}{':' + str(url.port) if url.port else ''}"
    name = f"{url.get_backend_name()} database {url.database or '?'} on {where}"
    try:
        postgres = url.get_backend_name() == "postgresql"
        args = {"connect_timeout": CONNECT_TIMEOUT} if postgres else {}
        engine = create_engine(url, connect_args=args)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise GradebookError(
            f"no driver for --db {url.drivername}:// ({exc}); for PostgreSQL install the "
            "course extra: python -m pip install 'kdlib[course]'"
        ) from None
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise GradebookError(
            f"cannot reach the gradebook ({name}): {reason[0] if reason else type(exc).__name__}"
        ) from None
    except ModuleNotFoundError as exc:
        raise GradebookError(
            f"no driver for --db {url.drivername}:// ({exc}); install the "
            "course extra: python -m pip install 'kdlib[course]'"
        ) from None
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- shards

# What ``kdlib grade --shard K/N`` keeps beside nbgrader's tables, so that one command can
# write issues.csv and the feedback pages of a class graded on several machines.
SHARD_LOCK = 0x6B646C6962  # the PostgreSQL advisory lock held while registering assignments


def _tables():
    from sqlalchemy import Column, MetaData, String, Table, Text

    meta = MetaData()
    issues = Table(
        "kdlib_issue",
        meta,
        Column("shard", String(32), nullable=False, index=True),
        Column("assignment", Text, nullable=False),
        Column("student", Text, nullable=False),
        Column("kind", String(64), nullable=False),
        Column("detail", Text, nullable=False),
    )
    feedback = Table(
        "kdlib_feedback",
        meta,
        Column("assignment", Text, nullable=False),
        Column("student", Text, nullable=False),
        Column("notebook", Text, nullable=False),
        Column("html", Text, nullable=False),
    )
    return meta, issues, feedback


def shard_of(student: str, count: int) -> int:
    """The shard (0 to ``count - 1``) that grades ``student``: every assignment of a student on
    the same shard, the same answer on every machine and every run (a hash, not Python's)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(student.encode("utf-8")).digest()[:8], "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (0 <= K < N) -> ``(K, N)``; raises GradebookError naming --shard."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise GradebookError(
            f"--shard {text!r}: expected K/N, e.g. 0/3 (shards are numbered from 0)"
        ) from None
    if n < 1 or not 0 <= k < n:
        raise GradebookError(f"--shard {text!r}: K must be between 0 and N - 1 (N >= 1)")
    return k, n


class registration_lock:  # noqa: N801 - used as a context manager
    """Held while a shard registers its assignments in a shared PostgreSQL gradebook (nbgrader
    creates its tables and rows there, which two processes must not do at once); nothing for
    SQLite."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self.connection = None

    def __enter__(self):
        from sqlalchemy import create_engine, text

        url = _parse(self.db_url)
        if url.get_backend_name() != "postgresql":
            return self
        self.engine = create_engine(url)
        self.connection = self.engine.connect()
        self.connection.execute(text(f"SELECT pg_advisory_lock({SHARD_LOCK})"))
        return self

    def __exit__(self, *exc):
        from sqlalchemy import text

        if self.connection is not None:
            self.connection.execute(text(f"SELECT pg_advisory_unlock({SHARD_LOCK})"))
            self.connection.close()
            self.engine.dispose()
        return False


def store_shard(db_url: str, shard: str, issues, feedback: dict) -> None:
    """Record what shard ``shard`` (``"K/N"``) found: its issues (replacing those of an earlier
    run of the same shard) and the feedback pages it wrote, ``{(assignment, student, notebook):
    html}`` (replacing earlier pages of the same submissions)."""
    from sqlalchemy import and_, create_engine, delete, insert

    meta, issue_table, feedback_table = _tables()
    engine = create_engine(_parse(db_url))
    try:
        with registration_lock(db_url), engine.begin() as conn:
            meta.create_all(conn)
            conn.execute(delete(issue_table).where(issue_table.c.shard == shard))
            rows = [
                {
                    "shard": shard,
                    "assignment": i.assignment,
                    "student": i.student,
                    "kind": i.kind,
                    "detail": i.detail,
                }
                for i in issues
            ]
            if rows:
                conn.execute(insert(issue_table), rows)
            for assignment, student in sorted({(a, s) for a, s, _ in feedback}):
                conn.execute(
                    delete(feedback_table).where(
                        and_(
                            feedback_table.c.assignment == assignment,
                            feedback_table.c.student == student,
                        )
                    )
                )
            pages = [
                {"assignment": a, "student": s, "notebook": n, "html": html}
                for (a, s, n), html in sorted(feedback.items())
            ]
            if pages:
                conn.execute(insert(feedback_table), pages)
    finally:
        engine.dispose()


def load_shards(db_url: str) -> tuple[list[tuple[str, str, str, str]], dict]:
    """What every shard recorded: issues as ``(assignment, student, kind, detail)`` and
    feedback pages ``{(assignment, student, notebook): html}``."""
    from sqlalchemy import create_engine, inspect, select

    meta, issue_table, feedback_table = _tables()
    engine = create_engine(_parse(db_url))
    try:
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            issues, pages = [], {}
            if "kdlib_issue" in present:
                issues = [
                    tuple(r)
                    for r in conn.execute(
                        select(
                            issue_table.c.assignment,
                            issue_table.c.student,
                            issue_table.c.kind,
                            issue_table.c.detail,
                        )
                    )
                ]
            if "kdlib_feedback" in present:
                for r in conn.execute(select(feedback_table)):
                    pages[(r.assignment, r.student, r.notebook)] = r.html
    finally:
        engine.dispose()
    return sorted(set(issues)), pages
