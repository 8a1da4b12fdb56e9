"""The course folder as nbgrader sees it: where it is, its ``nbgrader_config.py``, its
assignments (the folders of ``solutions/``), and the ``alembic`` command nbgrader needs.

Used by ``kdlib grade`` (:mod:`kdlib.course.grade`) and ``kdlib release``; also holds
:class:`GradingRun`, the settings and findings of one ``kdlib grade`` run, which the grading
modules pass along.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_FILE = "nbgrader_config.py"


DEFAULT_OUT = "grading"  # in the course folder; nbgrader_config.py puts nbgrader's folders there


class GradingError(Exception):
    """A usage error: the command cannot start (exit status 2)."""


def find_course_dir(start: str | Path | None = None) -> Path:
    """The first folder at or above ``start`` (default: cwd) holding ``nbgrader_config.py``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise GradingError(
        f"no {CONFIG_FILE} in {start} or above it: run from the course folder or pass --course-dir"
    )


def load_course_config(course_dir: Path):
    """The traitlets Config of ``course_dir/nbgrader_config.py``."""
    from traitlets.config import Config, PyFileConfigLoader

    path = course_dir / CONFIG_FILE
    if not path.is_file():
        return Config()
    return PyFileConfigLoader(CONFIG_FILE, path=str(course_dir)).load_config()


def config_value(cfg, section: str, name: str, default):
    sec = cfg.get(section, {})
    return sec[name] if name in sec else default


def source_assignments(source_dir: Path) -> dict[str, list[str]]:
    """Assignment name -> names (stems) of its notebooks, from the source folder."""
    found = {}
    if source_dir.is_dir():
        for folder in sorted(source_dir.iterdir()):
            if folder.is_dir() and not hidden_name(folder):
                notebooks = sorted(p.stem for p in folder.glob("*.ipynb"))
                if notebooks:
                    found[folder.name] = notebooks
    return found


def hidden_name(path: Path) -> bool:
    return path.name.startswith((".", "__"))


def ensure_alembic_on_path() -> None:
    """nbgrader creates a new gradebook by running the ``alembic`` command by name: when the
    environment's scripts folder is not on PATH (a venv used without activating it), add it."""
    if shutil.which("alembic") is None:
        scripts = Path(sys.executable).parent
        if (scripts / "alembic").exists() or (scripts / "alembic.exe").exists():
            os.environ["PATH"] = str(scripts) + os.pathsep + os.environ.get("PATH", "")


@dataclass
class GradingRun:
    """Everything one ``grade`` run needs once its arguments are checked."""

    course: Path
    cfg: object  # the course's nbgrader Config, with this run's overrides merged in
    source_dir: Path
    known: dict[str, list[str]]  # assignment -> its notebooks, from the source folder
    named: list[str]  # assignments named on the command line
    sub_root: Path
    out: Path
    submitted: Path
    in_place: bool  # grading <out>/submitted itself
    db_url: str
    csv_path: Path
    issues_path: Path
    timeout: int | None
    feedback: bool
    echo: Callable
    jobs: int = 1  # submissions autograded at once, each in its own process and kernel
    memory_limit: int | None = None  # bytes of data per submission's processes (None: none)
    file_limit: int | None = None  # bytes per file written, and of its /tmp (None: none)
    canary: str = ""  # what the canary found ("skipped ..." when --skip-canary)
    shard: tuple[int, int] | None = None  # (K, N): grade only the students of shard K
    skip_unneeded: bool = True  # leave out the cells no answer or test depends on
    sandbox: str = ""  # why the kernels run without bubblewrap ("" when they run in it)
    export: str | None = None  # also write <out>/grades-<export>.csv for an LMS (canvas, moodle)
    issues: list = field(default_factory=list)  # Issue (kdlib.course.submissions)
    graded: list[tuple[str, str]] = field(default_factory=list)

    @property
    def logs_dir(self) -> Path:
        return self.out / "logs"
