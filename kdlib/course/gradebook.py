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

__all__ = ["GradebookError", "check_database", "resolve_db_url"]

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
