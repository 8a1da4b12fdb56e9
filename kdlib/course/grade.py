"""``kdlib grade``: a folder of student submissions to grades, feedback and a gradebook.

    kdlib grade [ASSIGNMENT ...] --submissions DIR [--db URL] [--out DIR] [--jobs N]
                [--course-dir DIR] [--timeout SECONDS] [--csv FILE] [--no-feedback]

The work is done by nbgrader (0.9), through its Python API, with the course's
``nbgrader_config.py``; this module only adds what an instructor otherwise does by hand:

1. **Register** each assignment in the gradebook from the course's *source* folder
   (``solutions/``): ``generate_assignment`` into a temporary folder, so the committed release
   (``notebooks/``) is never touched. The gradebook then holds every locked cell and every
   hidden test, which autograding restores.
2. **Import** the submissions found in ``--submissions`` (either layout below) into
   ``<out>/submitted/<student>/<assignment>/<notebook>.ipynb``, after checking that each
   notebook is a readable notebook. A bad file is reported by name and skipped; the rest of the
   class is graded.
3. **Autograde** each submission (``nbgrader autograde``: locked cells overwritten from the
   gradebook, hidden tests restored, every cell run with a per-cell timeout), then **generate
   feedback** HTML into ``<out>/feedback/<student>/<assignment>/``.
4. **Export** ``<out>/grades.csv`` (one row per student and assignment: student, assignment,
   score, max_score, then the points of every graded cell) and ``<out>/issues.csv`` (everything
   reported: unreadable notebooks, unknown assignments, modified locked cells, cells cut at the
   timeout, failed autogrades).

Submission layouts (both may be mixed in one folder):

- nbgrader's: ``DIR/<student>/<assignment>/<notebook>.ipynb`` (what ``nbgrader collect`` and
  ``zip_collect`` produce; ``timestamp.txt`` and other files travel with the notebook);
- flat, per assignment: ``DIR/<assignment>/<student>.ipynb``; and, when exactly one ASSIGNMENT
  is named, ``DIR/<student>.ipynb``.

A folder named like an assignment of the course is read as the flat layout; any other folder
is a student's. When an assignment has one notebook, a submitted notebook with another name is
renamed to it.

Re-running is safe: nbgrader updates the gradebook in place (one submission per student and
assignment), manual grades entered in the formgrader are kept, and the CSV files come out the
same. Exit status: 0 every submission found was graded; 1 something was reported as bad input
or could not be graded (the rest was graded; see issues.csv); 2 usage error (no course, unknown
ASSIGNMENT named, no submissions folder).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kdlib.course.gradebook import GradebookError, check_database, resolve_db_url

CONFIG_FILE = "nbgrader_config.py"
DEFAULT_OUT = "grading"  # in the course folder; nbgrader_config.py puts nbgrader's folders there
TIMEOUT_ENAME = "CellTimeoutError"  # the error nbgrader's Execute writes into a cut cell
_REGEX_SPECIAL = set("()[]{}?*+|^$\\")  # nbgrader puts folder names into regexes unescaped

# issue kinds that mean a submission (or part of it) was not graded: exit status 1
BAD_INPUT = {
    "invalid-notebook",
    "unknown-assignment",
    "no-notebook",
    "unexpected-notebook",
    "duplicate-submission",
    "not-graded",
    "autograde-failed",
    "assignment-failed",
    "bad-student-id",
    "grading-error",
    "resource-limit",
}
_GLOB_SPECIAL = set("*?[]")  # nbgrader finds submissions with glob: ids cannot contain these
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a newline in an id breaks paths, logs and CSVs
_NOISE = {".ipynb_checkpoints", ".DS_Store", "__MACOSX", "Thumbs.db"}  # not worth a row
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell as a formula


class GradingError(Exception):
    """A usage error: the command cannot start (exit status 2)."""


@dataclass(frozen=True, order=True)
class Issue:
    """Something an instructor should know about one submission."""

    assignment: str
    student: str
    kind: str  # see BAD_INPUT; also locked-cell-modified, locked-cell-missing, cell-timeout...
    detail: str

    @property
    def bad(self) -> bool:
        return self.kind in BAD_INPUT


@dataclass
class Submission:
    """One student's work for one assignment, as found in the submissions folder."""

    student: str
    assignment: str
    origin: Path  # the file or folder it came from (for messages)
    files: list[Path] = field(default_factory=list)  # the notebooks found
    folder: Path | None = None  # nbgrader layout: the folder whose other files travel along


@dataclass
class Report:
    """What ``grade`` did."""

    out: Path
    db_url: str
    csv_path: Path
    issues_path: Path
    assignments: list[str]
    graded: list[tuple[str, str]]  # (assignment, student) autograded in this run
    issues: list[Issue]
    rows: list[dict[str, str]]  # the rows of grades.csv
    sandbox: str = ""  # why the kernels ran without bubblewrap ("" when they ran in it)

    @property
    def exit_code(self) -> int:
        return 1 if any(issue.bad for issue in self.issues) else 0


# --------------------------------------------------------------------------- course and config


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


def _config_value(cfg, section: str, name: str, default):
    sec = cfg.get(section, {})
    return sec[name] if name in sec else default


def source_assignments(source_dir: Path) -> dict[str, list[str]]:
    """Assignment name -> names (stems) of its notebooks, from the source folder."""
    found = {}
    if source_dir.is_dir():
        for folder in sorted(source_dir.iterdir()):
            if folder.is_dir() and not _hidden(folder):
                notebooks = sorted(p.stem for p in folder.glob("*.ipynb"))
                if notebooks:
                    found[folder.name] = notebooks
    return found


def _hidden(path: Path) -> bool:
    return path.name.startswith((".", "__"))


def _ensure_alembic_on_path() -> None:
    """nbgrader creates a new gradebook by running the ``alembic`` command by name: when the
    environment's scripts folder is not on PATH (a venv used without activating it), add it."""
    if shutil.which("alembic") is None:
        scripts = Path(sys.executable).parent
        if (scripts / "alembic").exists() or (scripts / "alembic.exe").exists():
            os.environ["PATH"] = str(scripts) + os.pathsep + os.environ.get("PATH", "")


def scan_submissions(
    root: Path, known: dict[str, list[str]], named: list[str]
) -> tuple[list[Submission], list[Issue]]:
    """Read the submissions folder (both layouts). Returns the submissions and the problems;
    every file or folder that is not graded is reported (``not-graded`` when it is or holds a
    notebook, ``ignored-file`` otherwise)."""
    subs: list[Submission] = []
    issues: list[Issue] = []

    def notebooks_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not _hidden(p))

    def ignored(entry: Path, student: str = "", assignment: str = "", why: str = "") -> None:
        if entry.name in _NOISE:
            return
        holds_notebook = entry.suffix == ".ipynb" or (
            entry.is_dir() and any(p.suffix == ".ipynb" for p in entry.rglob("*")))
        kind = "not-graded" if holds_notebook else "ignored-file"
        issues.append(Issue(assignment, student, kind, f"{entry}: not graded ({why})"))

    for entry in sorted(root.iterdir()):
        if _hidden(entry):
            ignored(entry, why="a hidden name (starts with . or __)")
            continue
        if entry.is_file():
            if entry.suffix != ".ipynb":
                ignored(entry, why="not a notebook")
                continue
            if len(named) == 1:
                subs.append(Submission(entry.stem, named[0], entry, [entry]))
            else:
                issues.append(Issue("", entry.stem, "unknown-assignment",
                                    f"{entry}: a notebook directly in the submissions folder "
                                    "needs exactly one ASSIGNMENT on the command line"))
        elif entry.is_dir() and entry.name in known:  # flat: DIR/<assignment>/<student>.ipynb
            for item in sorted(entry.iterdir()):
                if _hidden(item):
                    ignored(item, assignment=entry.name, why="a hidden name")
                elif item.is_file() and item.suffix == ".ipynb":
                    subs.append(Submission(item.stem, entry.name, item, [item]))
                elif item.is_dir():  # DIR/<assignment>/<student>/<notebook>.ipynb
                    subs.append(Submission(item.name, entry.name, item, notebooks_in(item), item))
                else:
                    ignored(item, assignment=entry.name, why="not a notebook")
        elif entry.is_dir():  # nbgrader: DIR/<student>/<assignment>/<notebook>.ipynb
            folders = [d for d in sorted(entry.iterdir()) if d.is_dir() and not _hidden(d)]
            loose = notebooks_in(entry)
            if not folders and loose:
                issues.append(Issue(entry.name, "", "unknown-assignment",
                                    f"{entry}: not an assignment of the course "
                                    f"(known: {', '.join(known) or 'none'})"))
                continue
            if not folders:
                issues.append(Issue("", entry.name, "no-notebook",
                                    f"{entry}: student folder with no notebook (expected "
                                    f"{entry.name}/<assignment>/<notebook>.ipynb)"))
                continue
            for item in sorted(entry.iterdir()):
                if item.is_dir() and not _hidden(item):
                    continue
                ignored(item, student=entry.name,
                        why="beside the assignment folders of a student (expected "
                        f"{entry.name}/<assignment>/<notebook>.ipynb)")
            for folder in folders:
                if folder.name not in known:
                    issues.append(Issue(folder.name, entry.name, "unknown-assignment",
                                        f"{folder}: not an assignment of the course "
                                        f"(known: {', '.join(known) or 'none'})"))
                    continue
                subs.append(Submission(entry.name, folder.name, folder,
                                       notebooks_in(folder), folder))

    # one submission per (assignment, student); report the later ones
    seen: dict[tuple[str, str], Submission] = {}
    unique = []
    for sub in subs:
        if _GLOB_SPECIAL & set(sub.student) or _CONTROL.search(sub.student):
            issues.append(Issue(sub.assignment, ascii(sub.student)[1:-1], "bad-student-id",
                                f"{ascii(str(sub.origin))[1:-1]}: a student id cannot contain "
                                "* ? [ ] or control characters (a newline, a tab): rename it"))
            continue
        key = (sub.assignment, sub.student)
        if key in seen:
            issues.append(Issue(sub.assignment, sub.student, "duplicate-submission",
                                f"{sub.origin}: a second submission of {sub.student} for "
                                f"{sub.assignment} (graded: {seen[key].origin})"))
            continue
        seen[key] = sub
        unique.append(sub)
    return unique, issues


def read_notebook(path: Path):
    """The notebook at ``path`` (nbformat 4), or raise ValueError with a readable reason."""
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # NotJSONError, UnicodeDecodeError, NBFormatError, KeyError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"not a valid notebook ({reason[:200]})") from exc
    if not isinstance(nb.get("cells"), list):
        raise ValueError("not a valid notebook (no cells)")
    return nb


# --------------------------------------------------------------------------- grading


def _copy_extras(src: Path, dest: Path) -> None:
    """Copy the non-notebook files of an nbgrader-layout submission folder."""
    for item in sorted(src.rglob("*")):
        rel = item.relative_to(src)
        if (any(part.startswith(".") for part in rel.parts) or item.suffix == ".ipynb"
                or item.is_symlink()):  # a link could fetch any file the grader can read
            continue
        target = dest / rel
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)


def import_submission(sub: Submission, expected: list[str], dest: Path, in_place: bool,
                      ) -> tuple[dict[str, object], list[Issue]]:
    """Check the notebooks of ``sub`` and copy them to ``dest`` (the nbgrader submitted folder)
    under the names the assignment expects. Returns {notebook name: notebook} and issues."""
    issues = []
    chosen: dict[str, tuple[Path, object]] = {}
    if not sub.files:
        issues.append(Issue(sub.assignment, sub.student, "no-notebook",
                            f"{sub.origin}: no notebook in the submission"))
        return {}, issues
    for path in sub.files:
        if path.stem in expected:
            name = path.stem
        elif len(expected) == 1 and len(sub.files) == 1 and not in_place:
            name = expected[0]
        else:
            issues.append(Issue(sub.assignment, sub.student, "unexpected-notebook",
                                f"{path}: not a notebook of {sub.assignment} "
                                f"(expected: {', '.join(e + '.ipynb' for e in expected)})"))
            continue
        try:
            nb = read_notebook(path)
        except ValueError as exc:
            issues.append(Issue(sub.assignment, sub.student, "invalid-notebook", f"{path}: {exc}"))
            continue
        chosen[name] = (path, nb)

    if in_place:
        if issues:  # nbgrader would grade the bad file too: leave the whole submission out
            issues.append(Issue(sub.assignment, sub.student, "not-graded",
                                f"{sub.origin}: not graded until the problems above are fixed"))
            return {}, issues
        return {name: nb for name, (_, nb) in chosen.items()}, issues
    if not chosen:
        return {}, issues

    # replace the previous copy of this submission (the originals stay in DIR)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if sub.folder is not None:
        _copy_extras(sub.folder, dest)
    for name, (path, _) in chosen.items():
        shutil.copyfile(path, dest / f"{name}.ipynb")
    return {name: nb for name, (_, nb) in chosen.items()}, issues


def _locked_checksums(nb) -> dict[str, str]:
    """grade_id -> nbgrader checksum of the locked cells of a (release or source) notebook."""
    from nbgrader import utils

    sums = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id") and utils.is_locked(cell):
            sums[meta["grade_id"]] = utils.compute_checksum(cell)
    return sums


def check_locked_cells(nb, release: dict[str, str], source: dict[str, str]) -> tuple[list, list]:
    """Locked cells of ``release`` that ``nb`` changed (neither the release's nor the source's
    version) or deleted. nbgrader restores changed ones from the gradebook before running."""
    from nbgrader import utils

    submitted = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade_id"):
            try:
                submitted[meta["grade_id"]] = utils.compute_checksum(cell)
            except Exception:  # e.g. points removed from the metadata
                submitted[meta["grade_id"]] = "?"
    modified = [g for g in release if g in submitted
                and submitted[g] not in (release[g], source.get(g))]
    missing = [g for g in release if g not in submitted]
    return modified, missing


def timed_out_cells(nb) -> list[str]:
    """grade_id (or ``cell N``) of each cell nbgrader cut at the per-cell timeout."""
    cut = []
    for index, cell in enumerate(nb.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and output.get("ename") == TIMEOUT_ENAME:
                cut.append(cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                           or f"cell {index}")
                break
    return cut


def _failure_reason(result: dict) -> str:
    """A one-line reason from an NbGraderAPI result that failed."""
    text = (result.get("log") or "") + "\n" + (result.get("error") or "")
    if "Timeout waiting for IOPub output" in text or "became unresponsive" in text:
        return ("the kernel did not stop when interrupted at the per-cell timeout "
                "(a loop that ignores interrupts?) and was killed")
    if "DeadKernelError" in text or "Kernel died" in text:
        return "the kernel died (the code exited or crashed the Python process)"
    found = re.findall(r"^\s*(?:\w+\.)*(\w+(?:Error|Exception|Exit): .+)$", text, re.M)
    found = [f for f in found if not f.startswith("NbGraderException: Please see")]
    if found:
        return found[-1].strip()[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.startswith("[ERROR]")]
    return (lines or ["unknown error"])[0][:300]


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{float(value):g}"


def _cell_order(source_nb_path: Path) -> list[str]:
    try:
        nb = read_notebook(source_nb_path)
    except (ValueError, OSError):
        return []
    return [c.metadata.nbgrader["grade_id"] for c in nb.cells
            if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")]


def export_grades(db_url: str, course_id: str, assignments: list[str], source_dir: Path,
                  ) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of grades.csv, from the gradebook: every submission of ``assignments``.
    Per-cell columns are ``<assignment>:<grade_id>`` (``<assignment>/<notebook>:<grade_id>``
    when an assignment has several notebooks), in assignment order and then notebook order."""
    from nbgrader.api import Gradebook, MissingEntry

    columns = ["student", "assignment", "score", "max_score"]
    rows = []
    with Gradebook(db_url, course_id) as gb:
        for name in assignments:
            try:
                assignment = gb.find_assignment(name)
            except MissingEntry:
                continue
            notebooks = sorted(assignment.notebooks, key=lambda n: n.name)
            keys = {}  # (notebook, grade_id) -> column
            for notebook in notebooks:
                order = _cell_order(source_dir / name / f"{notebook.name}.ipynb")
                cells = [c.name for c in [*notebook.grade_cells, *notebook.task_cells]]
                cells.sort(key=lambda g: (order.index(g) if g in order else len(order), g))
                prefix = name if len(notebooks) == 1 else f"{name}/{notebook.name}"
                for grade_id in cells:
                    keys[(notebook.name, grade_id)] = f"{prefix}:{grade_id}"
            columns.extend(keys.values())
            for sub in sorted(assignment.submissions, key=lambda s: s.student.id):
                row = {"student": sub.student.id, "assignment": name,
                       "score": _fmt(sub.score), "max_score": _fmt(sub.max_score)}
                for snb in sub.notebooks:
                    for grade in snb.grades:
                        key = keys.get((snb.notebook.name, grade.name))
                        if key:
                            row[key] = _fmt(grade.score)
                rows.append(row)
    return columns, rows


def _neutral(value):
    """A CSV cell a spreadsheet will not run: text starting with = + - @ (or a tab or carriage
    return) gets a leading apostrophe; numbers are left alone."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    rows = [{k: _neutral(v) for k, v in r.items()} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _zero_failed(db_url: str, course_id: str, assignment: str, student: str) -> None:
    """A submission whose autograde failed keeps a row, scored 0 and marked for manual grading
    (not the scores of an earlier run)."""
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(db_url, course_id) as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            gb.update_or_create_student(student)
            sub = gb.update_or_create_submission(assignment, student)
        for snb in sub.notebooks:
            for grade in snb.grades:
                grade.auto_score = 0.0
                grade.needs_manual_grade = True
        gb.db.commit()


@dataclass
class _Grading:
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
    sandbox: str = ""  # why the kernels run without bubblewrap ("" when they run in it)
    issues: list[Issue] = field(default_factory=list)
    graded: list[tuple[str, str]] = field(default_factory=list)

    @property
    def logs_dir(self) -> Path:
        return self.out / "logs"


def grade(
    submissions: str | Path,
    assignments: list[str] | None = None,
    *,
    course_dir: str | Path | None = None,
    out: str | Path | None = None,
    db_url: str | None = None,
    timeout: int | None = None,
    csv_path: str | Path | None = None,
    feedback: bool = True,
    jobs: int = 1,
    echo=print,
) -> Report:
    """Grade a folder of submissions; see the module docstring. Raises GradingError on usage
    errors; every problem with a submission is an Issue in the returned Report."""
    if not isinstance(jobs, int) or jobs < 1:
        raise GradingError(f"--jobs must be a positive integer, got {jobs!r}")
    run = _check_arguments(submissions, assignments, course_dir, out, db_url, timeout,
                           csv_path, feedback, echo)
    run.jobs = jobs
    _ensure_alembic_on_path()
    _announce_sandbox(run)
    subs, selected = _find_submissions(run)
    with tempfile.TemporaryDirectory(prefix="kdlib-grade-") as work:
        release_dir = os.path.join(work, "release")
        api = _nbgrader_api(run, release_dir)
        todo = []
        for name in selected:
            mine = [s for s in subs if s.assignment == name]
            checksums = _register_assignment(run, api, name, release_dir, len(mine))
            if checksums is None:
                continue
            try:
                template = _template_gradebook(run, api, name, Path(work))
            except Exception as exc:  # noqa: BLE001 - reported, the other assignments go on
                run.issues.append(Issue(name, "", "assignment-failed",
                                        f"{run.source_dir / name}: {exc}; its {len(mine)} "
                                        "submission(s) were not graded"))
                continue
            for sub in mine:
                job = _guarded(run, sub, _prepare_submission, run, sub, checksums, template,
                               Path(work) / f"job{len(todo):05d}")
                if job is not None:
                    todo.append(job)
        _autograde_all(run, api, todo)
    return _write_reports(run, api.coursedir.course_id, selected)


def _guarded(run: _Grading, sub: Submission, step: Callable, *args):
    """``step(*args)``; an unexpected error is reported against ``sub`` (kind grading-error)
    and the rest of the class goes on. Returns what the step returned, or None."""
    try:
        return step(*args)
    except Exception as exc:  # noqa: BLE001 - nothing one submission does may stop the class
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"{type(exc).__name__}: {first}"
        run.issues.append(Issue(sub.assignment, sub.student, "grading-error",
                                f"{sub.origin}: {step.__name__.strip('_')} failed "
                                f"({reason[:300]})"))
        run.echo(f"{sub.assignment}/{sub.student}: grading error ({reason[:120]})")
        return None


def _announce_sandbox(run: _Grading) -> None:
    """Say, on every run, whether the students' kernels run in bubblewrap."""
    from kdlib.course.sandbox import bwrap_status

    path, reason = bwrap_status()
    run.sandbox = "" if path else reason
    if path:
        run.echo(f"sandbox: each kernel runs in bubblewrap ({path}): its own scratch folder, "
                 "no network, nothing else of the course in sight")
    else:
        run.echo(f"kdlib grade: warning: NO SANDBOX: {reason}; the students' code runs with "
                 "this account's rights (see the README, 'Running students' code safely')")


def _check_arguments(submissions, assignments, course_dir, out, db_url, timeout, csv_path,
                     feedback, echo) -> _Grading:
    """Find the course and its assignments, check the folders, and create the output folder
    (and the SQLite gradebook's folder). Raises GradingError for every usage error."""
    course = Path(course_dir).resolve() if course_dir else find_course_dir()
    if not course.is_dir():
        raise GradingError(f"course folder {course} does not exist")
    cfg = load_course_config(course)
    source_dir = course / _config_value(cfg, "CourseDirectory", "source_directory", "source")
    known = source_assignments(source_dir)
    if not known:
        raise GradingError(f"no assignments in {source_dir} (expected <assignment>/*.ipynb)")
    named = list(dict.fromkeys(assignments or []))
    unknown = [a for a in named if a not in known]
    if unknown:
        raise GradingError(f"unknown assignment {', '.join(unknown)}: the course has "
                           f"{', '.join(known)} (in {source_dir})")
    sub_root = Path(submissions).resolve()
    if not sub_root.is_dir():
        raise GradingError(f"submissions folder {submissions} does not exist")

    out = Path(out).resolve() if out else course / DEFAULT_OUT
    submitted = out / "submitted"
    in_place = sub_root == submitted.resolve()
    if not in_place and (submitted.resolve().is_relative_to(sub_root)
                         or sub_root.is_relative_to(submitted.resolve())):
        raise GradingError(f"--out {out} and --submissions {sub_root} overlap: keep the "
                           "students' originals outside the grading folder")
    bad_chars = sorted(_REGEX_SPECIAL & set(str(out)))
    if bad_chars:
        raise GradingError(f"--out {out}: nbgrader cannot use a path containing "
                           f"{' '.join(bad_chars)}")
    csv_path = Path(csv_path).resolve() if csv_path else out / "grades.csv"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GradingError(f"--out {out}: cannot create it: {exc.strerror or exc}") from None
    try:
        db_url = resolve_db_url(db_url, out)
        check_database(db_url)
    except GradebookError as exc:
        raise GradingError(str(exc)) from None
    return _Grading(course, cfg, source_dir, known, named, sub_root, out, submitted, in_place,
                    db_url, csv_path, out / "issues.csv", timeout, feedback, echo)


def _find_submissions(run: _Grading) -> tuple[list[Submission], list[str]]:
    """The submissions to grade, sorted, and the assignments to grade; what cannot be graded
    goes to ``run.issues``."""
    subs, run.issues = scan_submissions(run.sub_root, run.known, run.named)
    selected = run.named or sorted({s.assignment for s in subs})
    skipped = [s for s in subs if s.assignment not in selected]
    if skipped:
        run.echo(f"skipping {len(skipped)} submission(s) of assignments not named on the "
                 "command line")
    subs = sorted((s for s in subs if s.assignment in selected),
                  key=lambda s: (s.assignment, s.student))
    if not subs and not run.issues:
        run.issues.append(Issue("", "", "no-notebook", f"{run.sub_root}: no submissions found"))
    return subs, selected


def _nbgrader_api(run: _Grading, release_dir: str):
    """nbgrader's API on the course's config, with this run's folders, gradebook and timeout;
    the release goes to ``release_dir``, never to the committed ``notebooks/``."""
    from traitlets.config import Config

    overrides = Config()
    overrides.CourseDirectory.root = str(run.course)
    overrides.CourseDirectory.release_directory = release_dir
    overrides.CourseDirectory.submitted_directory = str(run.submitted)
    overrides.CourseDirectory.autograded_directory = str(run.out / "autograded")
    overrides.CourseDirectory.feedback_directory = str(run.out / "feedback")
    overrides.CourseDirectory.db_url = run.db_url
    if run.timeout is not None:
        overrides.Execute.timeout = int(run.timeout)
    from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import (
        AssignLatePenalties,
        CheckCellMetadata,
        GetGrades,
        IgnorePattern,
        LimitOutput,
        SaveAutoGrades,
    )

    from kdlib.course.sandbox import FeedbackSafety, GuardedExecute

    overrides.Autograde.autograde_preprocessors = [
        GuardedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades,
        AssignLatePenalties, CheckCellMetadata]
    overrides.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor,
                                                FeedbackSafety]
    run.cfg.merge(overrides)
    run.cfg.NbGraderAPI.log_level = logging.INFO

    from nbgrader.apps import NbGraderAPI

    return NbGraderAPI(config=run.cfg)


def _register_assignment(run: _Grading, api, name: str, release_dir: str, n_subs: int):
    """Record assignment ``name`` in the gradebook from the source folder (locked cells,
    hidden tests). Returns ``(release_sums, source_sums)``: per notebook, the checksums of its
    locked cells in the release and in the gradebook; ``None`` when nbgrader failed (reported,
    and its ``n_subs`` submissions are not graded)."""
    from nbgrader.api import Gradebook

    run.echo(f"{name}: registering the assignment from {run.source_dir / name}")
    result = api.generate_assignment(name, force=True, create=True)
    _save_log(run.logs_dir / name / "_generate_assignment.log", result)
    if not result["success"]:
        run.issues.append(Issue(name, "", "assignment-failed",
                                f"{run.source_dir / name}: nbgrader generate_assignment failed "
                                f"({_failure_reason(result)}); its {n_subs} submission(s) "
                                "were not graded"))
        return None
    release_sums, source_sums, released = {}, {}, {}
    with Gradebook(run.db_url, api.coursedir.course_id) as gb:
        for nb_name in run.known[name]:
            rel = read_notebook(Path(release_dir) / name / f"{nb_name}.ipynb")
            release_sums[nb_name] = _locked_checksums(rel)
            released[nb_name] = {c.source.strip() for c in rel.cells if c.cell_type == "code"}
            nb_row = gb.find_notebook(nb_name, name)
            source_sums[nb_name] = {c.name: c.checksum for c in nb_row.source_cells if c.locked}
    return release_sums, source_sums, released


@dataclass
class _Job:
    """One submission, ready to autograde in its own process: a scratch course folder
    ``root`` holding only its notebooks (and the files travelling with them) under
    ``submitted/``, and a gradebook with only its assignment."""

    sub: Submission
    notebooks: dict  # notebook name -> notebook as submitted
    missing: dict  # notebook name -> grade_ids of the locked cells it deleted
    root: Path
    n_cells: int

    @property
    def db_url(self) -> str:
        return "sqlite:///" + str(self.root / "gradebook.db")

    @property
    def who(self) -> str:
        return f"{self.sub.assignment}/{self.sub.student}"


def _template_gradebook(run: _Grading, api, name: str, work: Path) -> Path:
    """A gradebook holding only assignment ``name`` (its cells, hidden tests): what each
    submission's process autogrades against, so that no process but this one writes to the
    real gradebook, and none sees the other students."""
    path = work / f"template-{name}.db"
    url = "sqlite:///" + str(path)
    saved = api.coursedir.db_url
    api.coursedir.db_url = url
    try:
        result = api.generate_assignment(name, force=True, create=True)
    finally:
        api.coursedir.db_url = saved
    if not result["success"]:
        raise GradingError(f"{name}: cannot build its gradebook ({_failure_reason(result)})")
    return path


def _prepare_submission(run: _Grading, sub: Submission, checksums, template: Path,
                        root: Path) -> _Job | None:
    """Import one submission, report its edited, deleted or duplicated locked cells, its bad
    timestamp and its suspicious cells, and lay out its scratch folder."""
    from kdlib.course.sandbox import scan_cells

    name = sub.assignment
    dest = run.submitted / sub.student / name
    notebooks, found = import_submission(sub, run.known[name], dest, run.in_place)
    run.issues.extend(found)
    if not notebooks:
        run.echo(f"{name}/{sub.student}: not graded (see the problems reported)")
        return None
    missing = _report_locked_cells(run, sub, notebooks, dest, checksums)
    scratch = root / "submitted" / sub.student / name
    shutil.copytree(dest, scratch, symlinks=True, ignore=lambda d, names: [
        n for n in names if n.startswith(".") or os.path.islink(os.path.join(d, n))])
    _check_timestamp(run, sub, scratch)
    n_cells = 0
    for nb_name, nb in sorted(notebooks.items()):
        import copy

        import nbformat

        nb = copy.deepcopy(nb)
        dups = _drop_duplicate_ids(nb)
        if dups:
            run.issues.append(Issue(name, sub.student, "duplicate-cell",
                                    f"{dest / nb_name}.ipynb: cell(s) {', '.join(dups)} appear "
                                    "more than once; the first copy is graded, the others run "
                                    "as plain cells"))
        nbformat.write(nb, str(scratch / f"{nb_name}.ipynb"))
        n_cells += len(nb.cells)
        reasons = scan_cells(nb, checksums[2][nb_name])
        if reasons:
            run.issues.append(Issue(name, sub.student, "manual-review",
                                    f"{dest / nb_name}.ipynb: " + " | ".join(reasons)))
    shutil.copyfile(template, root / "gradebook.db")
    return _Job(sub, notebooks, missing, root, n_cells)


def _check_timestamp(run: _Grading, sub: Submission, scratch: Path) -> None:
    """A timestamp.txt nbgrader cannot read is reported and left out (graded as on time)."""
    from nbgrader.utils import parse_utc

    stamp = scratch / "timestamp.txt"
    if not stamp.is_file():
        return
    try:
        text = stamp.read_text(encoding="utf-8").strip()
        parse_utc(text)
    except Exception as exc:  # noqa: BLE001 - ValueError, OverflowError, UnicodeDecodeError...
        stamp.unlink()
        run.issues.append(Issue(sub.assignment, sub.student, "bad-timestamp",
                                f"{sub.origin}: timestamp.txt is not a date nbgrader can read "
                                f"({type(exc).__name__}); graded without it (no late penalty)"))


def _drop_duplicate_ids(nb) -> list[str]:
    """Keep the nbgrader metadata of the first cell of each grade_id and drop it from later
    copies (nbgrader would otherwise fail the whole notebook). Returns the duplicated ids."""
    seen, dups = set(), []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        gid = meta.get("grade_id") if isinstance(meta, dict) else None
        if not gid:
            continue
        if gid in seen:
            del cell.metadata["nbgrader"]
            dups.append(gid)
        seen.add(gid)
    return list(dict.fromkeys(dups))


def _autograde_all(run: _Grading, api, jobs: list[_Job]) -> None:
    """Autograde every job, ``run.jobs`` at a time, each in a process of its own (forked from
    this one, so nbgrader is imported once); as each ends, its grades go into the gradebook
    (only this process writes there) and its feedback is written."""
    import multiprocessing
    import time
    from multiprocessing.connection import wait

    if not jobs:
        return
    if "fork" not in multiprocessing.get_all_start_methods():  # Windows: one at a time, here
        for job in jobs:
            _child_autograde(run, job)
            _guarded(run, job.sub, _finish_submission, run, api, job, 0)
        return
    ctx = multiprocessing.get_context("fork")
    threads = _threads_per_job(run.jobs)
    limit = _config_value(run.cfg, "Execute", "timeout", 30) or 30
    queue, running = list(jobs), {}
    while queue or running:
        while queue and len(running) < run.jobs:
            job = queue.pop(0)
            proc = ctx.Process(target=_child_main, args=(run, job, threads), daemon=True)
            proc.start()
            deadline = time.monotonic() + 120 + (job.n_cells + 2) * (2 * limit + 10)
            running[proc.sentinel] = (proc, job, deadline)
        for sentinel in wait(list(running), timeout=1.0):
            proc, job, _ = running.pop(sentinel)
            proc.join()
            _guarded(run, job.sub, _finish_submission, run, api, job, proc.exitcode)
        for sentinel, (proc, job, deadline) in list(running.items()):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the child and its kernel: one group
                proc.kill()
                proc.join()
                del running[sentinel]
                _guarded(run, job.sub, _finish_submission, run, api, job, "killed")


def _threads_per_job(jobs: int) -> dict[str, str]:
    """Thread-count variables for each kernel: its share of the cores (``KDLIB_CPUS``, and
    OpenMP's and MKL's pools capped to it), as ``kdlib course run --jobs`` gives; kdlib's thread
    policy then runs the small models on one thread (:mod:`kdlib.runtime`). A value the
    instructor set in the environment is kept."""
    if jobs <= 1:
        return {}
    from kdlib.runtime import available_cpus

    share = str(max(1, available_cpus() // jobs))
    return {k: share for k in ("KDLIB_CPUS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if k not in os.environ}


def _child_main(run: _Grading, job: _Job, threads: dict[str, str]) -> None:
    """Entry point of a submission's process: its share of the threads, its own process
    group, the memory and file-size limits (inherited by the kernel), then autograding."""
    from kdlib.course.sandbox import kdlib_path_entry

    os.environ.update(threads)
    os.environ["PYTHONSAFEPATH"] = "1"  # a kernel outside bubblewrap: cwd not on sys.path
    entry = kdlib_path_entry()  # the kernel imports the grader's own kdlib
    if entry:
        os.environ["PYTHONPATH"] = entry
    try:
        os.setpgrp()  # its kernel (and anything left outside a sandbox) is one group
    except OSError:
        pass
    set_resource_limits(run.memory_limit, run.file_limit)
    _child_autograde(run, job)


def set_resource_limits(memory: int | None, files: int | None) -> None:
    """Limit this process and those it starts (the kernel): ``memory`` bytes of data (heap and
    private mappings, ``RLIMIT_DATA``: an allocation past it fails with a MemoryError) and
    ``files`` bytes per file written (``RLIMIT_FSIZE``: a write past it fails with
    ``OSError: File too large``). None or 0: no limit. Not on Windows."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return
    for kind, value in ((resource.RLIMIT_DATA, memory), (resource.RLIMIT_FSIZE, files)):
        if value:
            hard = resource.getrlimit(kind)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, value))  # hard too: the kernel cannot raise it


def _child_autograde(run: _Grading, job: _Job) -> None:
    """nbgrader autograde of one submission against its scratch folder and gradebook; the
    result (success, log, what the guard put back) goes to ``root/result.json``."""
    import copy
    import json

    from traitlets.config import Config

    from kdlib.course.sandbox import GuardedExecute, SandboxedKernelManager

    result = {"success": False, "log": "", "error": ""}
    try:
        cfg = copy.deepcopy(run.cfg)
        overrides = Config()
        overrides.CourseDirectory.root = str(job.root)
        overrides.CourseDirectory.source_directory = str(run.source_dir)
        overrides.CourseDirectory.submitted_directory = str(job.root / "submitted")
        overrides.CourseDirectory.autograded_directory = str(job.root / "autograded")
        overrides.CourseDirectory.feedback_directory = str(job.root / "feedback")
        overrides.CourseDirectory.db_url = job.db_url
        cfg.merge(overrides)
        ipc = job.root / "ipc"
        ipc.mkdir(mode=0o700)
        GuardedExecute.sandboxed = not run.sandbox
        GuardedExecute.tampering = []
        SandboxedKernelManager.ipc_dir = ipc
        SandboxedKernelManager.tmp_size = run.file_limit
        SandboxedKernelManager.hidden = [run.course, run.out, run.sub_root, job.root]
        from nbgrader.apps import NbGraderAPI

        api = NbGraderAPI(config=cfg)
        result = dict(api.autograde(job.sub.assignment, job.sub.student, force=True,
                                    create=True))
        result["tampering"] = list(GuardedExecute.tampering)
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        result["error"] = (result.get("error") or "") + f"\n{type(exc).__name__}: {exc}"
    finally:
        (job.root / "result.json").write_text(json.dumps(result, default=str), "utf-8")


def _finish_submission(run: _Grading, api, job: _Job, exitcode) -> None:
    """After a submission's process: its log, its grades into the gradebook (or 0 pending a
    manual grade when autograding failed), its autograded notebooks, the cells cut at the
    timeout, what the guard put back, and its feedback."""
    import json

    sub, name = job.sub, job.sub.assignment
    course_id = api.coursedir.course_id
    path = job.root / "result.json"
    result = (json.loads(path.read_text("utf-8")) if path.is_file() else
              {"success": False, "log": "", "error":
               f"the grading process ended without a result (exit status {exitcode})"})
    log_path = run.logs_dir / name / f"{sub.student}.log"
    _save_log(log_path, result)
    autograded = run.out / "autograded" / sub.student / name
    if autograded.exists():
        shutil.rmtree(autograded)
    if not result["success"]:
        _zero_failed(run.db_url, course_id, name, sub.student)
        stale = run.out / "feedback" / sub.student / name
        if stale.exists():
            shutil.rmtree(stale)
        kernel_log = job.root / "ipc" / "kernel.log"
        text = (result.get("log") or "") + (result.get("error") or "") + (
            kernel_log.read_text("utf-8", "replace")[-20000:] if kernel_log.is_file() else "")
        if _LIMIT_HIT.search(text):
            run.issues.append(Issue(name, sub.student, "resource-limit",
                                    f"{run.submitted / sub.student / name}: the kernel died at "
                                    f"the resource limits ({_limits(run)}); scored 0 pending "
                                    f"a manual grade; log: {log_path}"))
        else:
            run.issues.append(Issue(name, sub.student, "autograde-failed",
                                    f"{run.submitted / sub.student / name}: autograding failed "
                                    f"({_failure_reason(result)}); scored 0 pending a manual "
                                    f"grade; log: {log_path}"))
        run.echo(f"{job.who}: autograding FAILED")
        return
    _merge_grades(run.db_url, job.db_url, course_id, name, sub.student, job.missing)
    autograded.mkdir(parents=True)
    produced = job.root / "autograded" / sub.student / name
    for item in [*produced.glob("*.ipynb"), produced / "timestamp.txt"]:
        if item.is_file() and not item.is_symlink():
            shutil.copyfile(item, autograded / item.name)
    run.graded.append((name, sub.student))
    _report_timeouts(run, sub, job.notebooks)
    hit = _report_resource_limits(run, sub, job.notebooks)
    if hit:
        _zero_failed(run.db_url, course_id, name, sub.student)
    if result.get("tampering"):
        run.issues.append(Issue(name, sub.student, "tests-tampered",
                                f"{autograded}: before its locked cells the grader had to put "
                                f"back what earlier cells changed: "
                                f"{'; '.join(result['tampering'])}"))
    if run.feedback:
        fb = api.generate_feedback(name, sub.student, force=True)
        _save_log(run.logs_dir / name / f"{sub.student}.feedback.log", fb)
        if not fb["success"]:
            run.issues.append(Issue(name, sub.student, "feedback-failed",
                                    f"feedback for {job.who} failed ({_failure_reason(fb)})"))
    from nbgrader.api import Gradebook

    with Gradebook(run.db_url, course_id) as gb:
        s = gb.find_submission(name, sub.student)
        run.echo(f"{job.who}: {_fmt(s.score)}/{_fmt(s.max_score)}")


def _merge_grades(db_url: str, job_url: str, course_id: str, assignment: str, student: str,
                  missing: dict) -> None:
    """Copy one autograded submission from its own gradebook into the course's: automatic
    scores, comments, timestamp and late penalty (manual grades already there are kept). A
    locked cell the student deleted scores 0 and is marked for a manual grade, never keeps the
    score of an earlier run."""
    from nbgrader.api import Gradebook

    with Gradebook(job_url, course_id) as src, Gradebook(db_url, course_id) as dst:
        done = src.find_submission(assignment, student)
        dst.update_or_create_student(student)
        dst.update_or_create_submission(assignment, student, timestamp=done.timestamp)
        for snb in done.notebooks:
            dnb = dst.find_submission_notebook(snb.name, assignment, student)
            dnb.late_submission_penalty = snb.late_submission_penalty
            gone = set(missing.get(snb.name, ()))
            for grade in snb.grades:
                target = dst.find_grade(grade.name, snb.name, assignment, student)
                if grade.name in gone:
                    target.auto_score, target.needs_manual_grade = 0.0, True
                else:
                    target.auto_score = grade.auto_score
                    target.needs_manual_grade = grade.needs_manual_grade
            for comment in snb.comments:
                dst.find_comment(comment.name, snb.name, assignment, student).auto_comment = (
                    comment.auto_comment)
        dst.db.commit()


def _report_locked_cells(run: _Grading, sub: Submission, notebooks: dict, dest: Path,
                         checksums) -> None:
    """Report the locked cells a submission edited (restored by autograde) or deleted; returns
    the deleted ones per notebook."""
    release_sums, source_sums, _ = checksums
    deleted = {}
    for nb_name, nb in sorted(notebooks.items()):
        modified, missing = check_locked_cells(nb, release_sums[nb_name], source_sums[nb_name])
        if modified:
            run.issues.append(Issue(sub.assignment, sub.student, "locked-cell-modified",
                                    f"{dest / nb_name}.ipynb: locked cell(s) "
                                    f"{', '.join(modified)} edited by the student; "
                                    "restored from the gradebook before grading"))
        if missing:
            run.issues.append(Issue(sub.assignment, sub.student, "locked-cell-missing",
                                    f"{dest / nb_name}.ipynb: locked cell(s) "
                                    f"{', '.join(missing)} deleted by the student; "
                                    "scored 0 and marked for a manual grade"))
            deleted[nb_name] = missing
    return deleted


def _report_timeouts(run: _Grading, sub: Submission, notebooks: dict) -> None:
    """Report the cells of an autograded submission that were cut at the per-cell timeout."""
    import nbformat

    for nb_name in sorted(notebooks):
        path = run.out / "autograded" / sub.student / sub.assignment / f"{nb_name}.ipynb"
        if path.is_file():
            cut = timed_out_cells(nbformat.read(str(path), as_version=4))
            if cut:
                limit = _config_value(run.cfg, "Execute", "timeout", 30)
                run.issues.append(Issue(sub.assignment, sub.student, "cell-timeout",
                                        f"{path}: {', '.join(cut)} cut after the per-cell "
                                        f"timeout ({limit} s)"))


# what an allocation past RLIMIT_DATA, a write past RLIMIT_FSIZE or a full /tmp raise
_LIMIT_HIT = re.compile(r"MemoryError|can't allocate memory|Cannot allocate memory|"
                        r"Unable to allocate|std::bad_alloc|File too large|"
                        r"No space left on device|OutOfMemoryError")


def _limits(run: _Grading) -> str:
    return (f"--memory-limit {_fmt_bytes(run.memory_limit)}, "
            f"--file-limit {_fmt_bytes(run.file_limit)}")


def resource_limit_cells(nb) -> list[str]:
    """grade_id (or ``cell N``) of each cell that failed at a resource limit (memory, file
    size, a full /tmp)."""
    hit = []
    for index, cell in enumerate(nb.cells, start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and _LIMIT_HIT.search(
                    f"{output.get('ename', '')}: {output.get('evalue', '')}"):
                hit.append(cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                           or f"cell {index}")
                break
    return hit


def _report_resource_limits(run: _Grading, sub: Submission, notebooks: dict) -> bool:
    """Report the cells of an autograded submission that hit a resource limit; True if any
    (the submission is then scored 0 pending a manual grade)."""
    import nbformat

    found = False
    for nb_name in sorted(notebooks):
        path = run.out / "autograded" / sub.student / sub.assignment / f"{nb_name}.ipynb"
        if path.is_file():
            hit = resource_limit_cells(nbformat.read(str(path), as_version=4))
            if hit:
                found = True
                run.issues.append(Issue(sub.assignment, sub.student, "resource-limit",
                                        f"{path}: {', '.join(hit)} failed at the resource "
                                        f"limits ({_limits(run)}); scored 0 pending a manual "
                                        "grade"))
    return found


def _fmt_bytes(n: int | None) -> str:
    if not n:
        return "none"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def parse_size(text: str, flag: str) -> int | None:
    """``4G``, ``512M``, ``100K`` or a number of bytes; ``0`` or ``none``: no limit."""
    value = str(text).strip().upper()
    if value in ("0", "NONE", "OFF"):
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        size = int(float(number) * scale)
    except ValueError:
        raise GradingError(f"{flag} {text!r}: expected a size such as 4G, 512M or 0 "
                           "(no limit)") from None
    if size < 0:
        raise GradingError(f"{flag} {text!r}: a size cannot be negative")
    return size or None


def _write_reports(run: _Grading, course_id: str, selected: list[str]) -> Report:
    """Write grades.csv (from the gradebook) and issues.csv; return the run's Report."""
    columns, rows = export_grades(run.db_url, course_id, selected, run.source_dir)
    _write_csv(run.csv_path, columns, rows)
    issues = sorted(set(run.issues))
    _write_csv(run.issues_path, ["assignment", "student", "issue", "detail"],
               [{"assignment": i.assignment, "student": i.student, "issue": i.kind,
                 "detail": i.detail} for i in issues])
    return Report(run.out, run.db_url, run.csv_path, run.issues_path, selected,
                  sorted(run.graded), issues, rows, run.sandbox)


def _save_log(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (result.get("log") or "") + ("\n" + result["error"] if result.get("error") else "")
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser, path=("grade",)) -> None:
    """Flags of ``kdlib grade``."""
    parser.description = (
        "Import the students' notebooks found in --submissions (nbgrader's "
        "<student>/<assignment>/<notebook>.ipynb layout, or a flat <assignment>/<student>.ipynb "
        "folder), autograde them with nbgrader, write per-student feedback HTML, and export "
        "<out>/grades.csv and <out>/issues.csv. Bad files are reported by name and the rest of "
        "the class is graded. Exit status: 0 all graded, 1 something reported as bad input or "
        "not graded (see issues.csv), 2 usage error."
    )
    parser.add_argument("assignments", nargs="*", metavar="ASSIGNMENT",
                        help="assignments to grade (default: every assignment found in "
                        "--submissions)")
    parser.add_argument("--submissions", required=True, metavar="DIR",
                        help="folder of collected submissions")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="gradebook: any SQLAlchemy URL nbgrader accepts, e.g. "
                        "postgresql://user@host/course (default: sqlite:///<out>/gradebook.db)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where submitted/, autograded/, feedback/, logs/, the gradebook "
                        "and the CSV files go (default: grading/ in the course folder)")
    parser.add_argument("--course-dir", default=None, metavar="DIR",
                        help="the course folder (default: the first folder at or above the "
                        f"current one with {CONFIG_FILE})")
    parser.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                        help="per-cell execution limit while autograding (default: "
                        f"Execute.timeout in {CONFIG_FILE})")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="where to write the grades (default: <out>/grades.csv)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="autograde N submissions at once, each in its own process and "
                        "kernel, the CPU threads shared among them (default: 1)")
    parser.add_argument("--no-feedback", action="store_true",
                        help="skip generating the feedback HTML")


def main(args: argparse.Namespace) -> int:
    """Run ``kdlib grade``; returns the exit status."""
    try:
        from sqlalchemy.exc import SAWarning

        warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's session noise
    except ImportError:  # pragma: no cover
        pass
    try:
        report = grade(
            args.submissions,
            args.assignments,
            course_dir=args.course_dir,
            out=args.out,
            db_url=args.db,
            timeout=args.timeout,
            csv_path=args.csv,
            feedback=not args.no_feedback,
            jobs=args.jobs,
        )
    except GradingError as exc:
        print(f"kdlib grade: {exc}", file=sys.stderr)
        return 2
    for issue in report.issues:
        level = "error" if issue.bad else "warning"
        print(f"kdlib grade: {level}: {issue.detail}", file=sys.stderr)
    if report.sandbox:
        print(f"kdlib grade: warning: the students' code ran WITHOUT a sandbox "
              f"({report.sandbox})", file=sys.stderr)
    n_bad = sum(issue.bad for issue in report.issues)
    print(f"graded {len(report.graded)} submission(s) of {', '.join(report.assignments) or '-'}; "
          f"{n_bad} problem(s) reported")
    print(f"grades:   {report.csv_path}")
    print(f"issues:   {report.issues_path}")
    print(f"feedback: {report.out / 'feedback'}")
    print(f"gradebook: {report.db_url}")
    return report.exit_code


if __name__ == "__main__":  # pragma: no cover
    from kdlib.course.cli import main as cli_main

    raise SystemExit(cli_main(["grade", *sys.argv[1:]]))
