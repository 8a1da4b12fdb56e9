"""``kdlib release``: regenerate the student notebooks (notebooks/) from the solutions.

    kdlib release                      every assignment in solutions/
    kdlib release 03_training_loop     one assignment
    kdlib release --execute            first run each solution in fast mode and store the
                                       output of the cells marked ``# NBVAL_CHECK_OUTPUT``
    kdlib release --check              change nothing; exit 1 if notebooks/ or solutions/
                                       differ from what this command would write

What it does, per assignment:

1. *Cleans the solution* (``solutions/<a>/<a>.ipynb``): removes every output and execution
   count except the outputs (and a fixed execution count of 1) of cells whose first line is
   ``# NBVAL_CHECK_OUTPUT`` (nbval compares those), and drops run-time metadata (papermill's,
   execution timings), so that the
   committed notebooks do not change from one run to the next.
2. *Generates the release* with nbgrader's ``generate_assignment`` in a temporary course folder
   (the course's own gradebook is not touched): solution regions become
   ``raise NotImplementedError()``, hidden tests are removed, outputs are cleared, locked cells
   get their checksums. The result replaces ``notebooks/<a>/``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

__all__ = [
    "assignments",
    "clean_solution",
    "generate_releases",
    "release",
    "check",
]


def _root(course_dir: str | Path | None) -> Path:
    if course_dir is not None:
        return Path(course_dir).resolve()
    from kdlib.course.run import find_repo_root

    return find_repo_root()


def assignments(course_dir: str | Path | None = None) -> list[str]:
    """Names of the assignments: the folders of ``solutions/`` that hold a notebook."""
    source = _root(course_dir) / "solutions"
    return sorted(p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb")))


def _checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_MARK)


def clean_solution(nb, keep_from=None):
    """Return a copy of ``nb`` with outputs only in ``# NBVAL_CHECK_OUTPUT`` cells.

    ``keep_from``: an executed copy of the notebook whose outputs for the checked cells are
    taken (matched by cell id, else by source); without it the stored outputs are kept.
    """
    nb = copy.deepcopy(nb)
    executed = {}
    if keep_from is not None:
        for cell in keep_from.cells:
            if _checked(cell):
                executed[cell.get("id")] = cell
                executed[cell.source] = cell
    for cell in nb.cells:
        for key in ("execution", "papermill", "collapsed", "scrolled", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        if not _checked(cell):
            cell.execution_count = None
            cell.outputs = []
            continue
        # nbval refuses a stored output whose cell has no execution count ("unrun reference
        # cell has outputs"): checked cells get a fixed one, so the file stays the same
        cell.execution_count = 1
        if executed:
            match = executed.get(cell.get("id")) or executed.get(cell.source)
            if match is None:
                raise ValueError(f"no executed output for checked cell:\n{cell.source[:200]}")
            cell.outputs = copy.deepcopy(match.outputs)
        for output in cell.outputs:
            if "execution_count" in output:
                output.execution_count = 1
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python"},
            **({"nbgrader": nb.metadata["nbgrader"]} if "nbgrader" in nb.metadata else {}),
        }
    )
    return nb


def _execute_fast(path: Path, workdir: Path):
    """Run a solution in fast mode with papermill; return the executed notebook."""
    import papermill

    out = workdir / f"executed-{path.name}"
    env_before = os.environ.get("KDLIB_FAST")
    os.environ["KDLIB_FAST"] = "1"
    os.environ.setdefault("MPLBACKEND", "agg")
    try:
        papermill.execute_notebook(
            str(path),
            str(out),
            kernel_name="python3",
            cwd=str(workdir),
            progress_bar=False,
            execution_timeout=600,
        )
    finally:
        if env_before is None:
            os.environ.pop("KDLIB_FAST", None)
        else:
            os.environ["KDLIB_FAST"] = env_before
    return nbformat.read(out, as_version=4)


def generate_releases(names: list[str], course_dir: str | Path | None = None) -> dict:
    """Run nbgrader's generate_assignment on ``solutions/<name>`` for each name, in a temporary
    course folder with a temporary gradebook (one for all, so nbgrader sets it up once).

    Returns ``{name: {relative file name: text}}`` of each generated release folder
    (notebooks in canonical form). Raises ``RuntimeError`` with nbgrader's log on failure.
    """
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    from kdlib.course.grade import _ensure_alembic_on_path, load_course_config

    _ensure_alembic_on_path()  # nbgrader runs the `alembic` command of this environment
    root = _root(course_dir)
    releases = {}
    with tempfile.TemporaryDirectory(prefix="kdlib-release-") as tmp:
        # the course's own settings (course id, stubs), with the release and the gradebook
        # moved into the temporary folder
        config = load_course_config(root)
        overrides = Config()
        overrides.CourseDirectory.root = str(root)
        overrides.CourseDirectory.source_directory = "solutions"
        overrides.CourseDirectory.release_directory = str(Path(tmp) / "release")
        overrides.CourseDirectory.db_url = f"sqlite:///{tmp}/gradebook.db"
        overrides.NbGraderAPI.log_level = logging.WARNING
        config.merge(overrides)
        api = NbGraderAPI(config=config)
        for name in names:
            result = api.generate_assignment(name, force=True, create=True)
            if not result["success"]:
                raise RuntimeError(
                    f"nbgrader could not generate {name}:\n{result.get('error') or ''}\n"
                    f"{result.get('log') or ''}"
                )
            folder = Path(tmp) / "release" / name
            files = {}
            for path in sorted(folder.rglob("*")):
                if not path.is_file():
                    continue
                rel = path.relative_to(folder).as_posix()
                if path.suffix == ".ipynb":
                    nb = nbformat.read(path, as_version=4)
                    nb.metadata["kernelspec"] = KERNELSPEC
                    nb.metadata["language_info"] = {"name": "python"}
                    files[rel] = nbformat.writes(nb, version=4) + "\n"
                else:
                    files[rel] = path.read_text()
            releases[name] = files
    return releases


def release(
    names: list[str] | None = None,
    course_dir: str | Path | None = None,
    execute: bool = False,
    check_only: bool = False,
    echo=print,
) -> list[str]:
    """Clean the solutions and regenerate their releases; returns the paths that changed
    (with ``check_only``: that would change, writing nothing)."""
    root = _root(course_dir)
    known = assignments(root)
    names = names or known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown assignment {', '.join(unknown)}; known: {', '.join(known)}")
    changed = []
    cleaned_changed = {}
    for name in names:
        before = len(changed)
        source_dir = root / "solutions" / name
        with tempfile.TemporaryDirectory(prefix="kdlib-exec-") as tmp:
            for path in sorted(source_dir.glob("*.ipynb")):
                nb = nbformat.read(path, as_version=4)
                executed = _execute_fast(path, Path(tmp)) if execute else None
                cleaned = clean_solution(nb, keep_from=executed)
                text = nbformat.writes(cleaned, version=4) + "\n"
                if path.read_text() != text:
                    changed.append(str(path.relative_to(root)))
                    if not check_only:
                        path.write_text(text)
        cleaned_changed[name] = len(changed) > before
    releases = generate_releases(names, root)
    for name in names:
        before = len(changed)
        files = releases[name]
        dest = root / "notebooks" / name
        current = (
            {
                p.relative_to(dest).as_posix(): p.read_text()
                for p in sorted(dest.rglob("*"))
                if p.is_file()
            }
            if dest.exists()
            else {}
        )
        if current != files:
            changed.append(str(dest.relative_to(root)))
            if not check_only:
                shutil.rmtree(dest, ignore_errors=True)
                for rel, text in files.items():
                    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                    (dest / rel).write_text(text)
        state = "out of date" if check_only else "updated"
        state = "up to date" if len(changed) == before and not cleaned_changed[name] else state
        echo(f"{name}: {state}")
    stale = (
        [p.name for p in (root / "notebooks").iterdir() if p.is_dir() and p.name not in known]
        if (root / "notebooks").exists()
        else []
    )
    for name in stale:
        changed.append(f"notebooks/{name}")
        if not check_only:
            shutil.rmtree(root / "notebooks" / name)
    return changed


def check(course_dir: str | Path | None = None) -> list[str]:
    """What ``kdlib release`` would change now (empty when everything is up to date)."""
    return release(course_dir=course_dir, check_only=True, echo=lambda *a: None)


def add_arguments(parser: argparse.ArgumentParser, path=("release",)) -> None:
    parser.add_argument("assignments", nargs="*", help="assignments to release (default: all)")
    parser.add_argument(
        "--execute",
        action="store_true",
        help="run each solution in fast mode first and store the outputs of the "
        f"cells marked '{CHECK_MARK}'",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if anything would change"
    )
    parser.add_argument("--course-dir", default=None, help="course root (default: this repo)")


def main(args: argparse.Namespace) -> int:
    try:
        changed = release(
            args.assignments or None,
            course_dir=args.course_dir,
            execute=args.execute,
            check_only=args.check,
        )
    except (ValueError, RuntimeError) as err:
        print(f"kdlib release: {err}", file=sys.stderr)
        return 2
    if args.check:
        for path in changed:
            print(f"out of date: {path}")
        return 1 if changed else 0
    for path in changed:
        print(f"updated {path}")
    return 0
