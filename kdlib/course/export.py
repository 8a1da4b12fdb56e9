"""What ``kdlib grade`` writes from the gradebook: ``grades.csv`` (one row per student and
assignment, then the points of every graded cell) and ``issues.csv``; cells a spreadsheet would
run as a formula are neutralised.

Also the command ``kdlib gradebook export --db URL [--out DIR] [ASSIGNMENT ...]``: after a class
was graded in shards (``kdlib grade --shard K/N`` on several machines, one PostgreSQL
gradebook), it writes ``grades.csv``, ``issues.csv`` and every feedback page from the gradebook
alone. grades.csv is the one a single ``kdlib grade`` would have written.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from kdlib.course.coursedir import GradingRun
from kdlib.course.submissions import Issue, read_notebook

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell as a formula


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
    canary: str = ""  # what the canary found, or "skipped (--skip-canary)"
    lms_path: Path | None = None  # grades-canvas.csv or grades-moodle.csv (with ``export``)

    @property
    def exit_code(self) -> int:
        return 1 if any(issue.bad for issue in self.issues) else 0


def fmt_score(value) -> str:
    if value is None:
        return ""
    return f"{float(value):g}"


def _cell_order(source_nb_path: Path) -> list[str]:
    try:
        nb = read_notebook(source_nb_path)
    except (ValueError, OSError):
        return []
    return [
        c.metadata.nbgrader["grade_id"]
        for c in nb.cells
        if c.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    ]


def export_grades(
    db_url: str,
    course_id: str,
    assignments: list[str],
    source_dir: Path,
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
                row = {
                    "student": sub.student.id,
                    "assignment": name,
                    "score": fmt_score(sub.score),
                    "max_score": fmt_score(sub.max_score),
                }
                for snb in sub.notebooks:
                    for grade in snb.grades:
                        key = keys.get((snb.notebook.name, grade.name))
                        if key:
                            row[key] = fmt_score(grade.score)
                rows.append(row)
    return columns, rows


# ----------------------------------------------------------- model answers for the graders

_BEGIN, _END = "### BEGIN SOLUTION", "### END SOLUTION"


def write_rubrics(source: Path, out: Path) -> list[Path]:
    """For each notebook of the assignment folder ``source`` with manually graded written
    answers (markdown cells with nbgrader ``solution`` and ``grade``), write
    ``out/<notebook>.md``: per answer its grade id, points, the question (the markdown cell
    before it) and the model answer with its marking rubric (the source's solution block).

    nbgrader's formgrader shows a grader the student's answer and a box for the score and a
    comment, not the source's solution; this file, in the grading folder beside the
    submissions (open it next to the formgrader), is where graders read what earns the
    points. It is never released: ``grading/`` is not in the repository, ``notebooks/`` or
    the student edition. Rewritten on every run; a notebook with no written answer gets no
    file (and an old one is removed)."""
    written = []
    for path in sorted(source.glob("*.ipynb")):
        try:
            cells = read_notebook(path).cells
        except (ValueError, OSError):
            continue
        parts = []
        for i, cell in enumerate(cells):
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell.cell_type != "markdown" or not (meta.get("solution") and meta.get("grade")):
                continue
            text = cell.source
            if _BEGIN in text and _END in text:
                text = text.split(_BEGIN, 1)[1].split(_END, 1)[0]
            before = cells[i - 1].source if i and cells[i - 1].cell_type == "markdown" else ""
            parts.append(
                f"## {meta.get('grade_id', '?')} ({fmt_score(meta.get('points', 0))} points)\n\n"
                f"### The question\n\n{before.strip()}\n\n"
                f"### Model answer and rubric\n\n{text.strip()}\n"
            )
        target = out / f"{path.stem}.md"
        if not parts:
            target.unlink(missing_ok=True)
            continue
        out.mkdir(parents=True, exist_ok=True)
        head = (
            f"# {path.stem}: written answers graded by hand\n\n"
            "For graders only (from the solution notebook; never give this file to students). "
            "Enter each score and comment in nbgrader's formgrader; `kdlib grade` keeps them.\n\n"
        )
        target.write_text(head + "\n".join(parts), encoding="utf-8")
        written.append(target)
    return written


# ------------------------------------------------------------------ gradebooks of an LMS

# Canvas: the columns of its gradebook export, which its import reads back: the student's
# name, Canvas ID, SIS User ID, SIS Login ID and section, then one column per assignment, and
# a second row "Points Possible" with each assignment's maximum. Documented for instructors in
# "Import a CSV file to Carmen grades" (The Ohio State University, CarmenCanvas guides,
# https://teaching.resources.osu.edu/toolsets/carmencanvas/guides/calculating-final-grades/
# import-csv-file-carmen-grades): one of Student / ID / SIS User ID identifies the student, then
# SIS Login ID, Section, and the assignments; a new assignment column creates the assignment.
CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
# Moodle: "Grade import" (MoodleDocs, https://docs.moodle.org/311/en/Grade_import): a CSV with a
# header row, mapped on import from a user column ("Email address" to useremail, or "ID number"
# to useridnumber) and one column per grade item.
MOODLE_COLUMNS = ["First name", "Last name", "ID number", "Email address"]
LMS_FORMATS = ("canvas", "moodle")


def lms_grades(
    db_url: str, course_id: str, assignments: list[str], fmt: str
) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of the CSV a ``fmt`` gradebook (``"canvas"`` or ``"moodle"``) imports:
    one row per student of the gradebook, one column per assignment with the student's total
    score (autograded and manual grades together, as nbgrader sums them; empty where the
    student submitted nothing). Students are identified by their nbgrader id (Canvas: SIS User
    ID and SIS Login ID; Moodle: ID number) and, where the gradebook has them, name, email
    and LMS user id."""
    from nbgrader.api import Gradebook, MissingEntry

    if fmt not in LMS_FORMATS:
        raise ValueError(f"format must be one of {', '.join(LMS_FORMATS)}, got {fmt!r}")
    with Gradebook(db_url, course_id) as gb:
        found = []
        for name in assignments:
            try:
                found.append(gb.find_assignment(name))
            except MissingEntry:
                continue
        names = [a.name for a in found]
        scores = {
            (sub.student.id, a.name): fmt_score(sub.score) for a in found for sub in a.submissions
        }
        maxima = {a.name: fmt_score(a.max_score) for a in found}
        students = [
            (st.id, st.first_name or "", st.last_name or "", st.email or "", st.lms_user_id or "")
            for st in sorted(gb.students, key=lambda st: st.id)
        ]
    rows: list[dict[str, str]] = []
    if fmt == "canvas":
        columns = CANVAS_COLUMNS + names
        rows.append({"Student": "    Points Possible", **maxima})
        for sid, first, last, _email, lms_id in students:
            name = f"{last}, {first}" if last and first else (last or first or sid)
            row = {"Student": name, "ID": lms_id, "SIS User ID": sid, "SIS Login ID": sid}
            rows.append({**row, "Section": "", **{a: scores.get((sid, a), "") for a in names}})
    else:
        columns = MOODLE_COLUMNS + names
        for sid, first, last, email, _lms_id in students:
            row = {"First name": first, "Last name": last, "ID number": sid, "Email address": email}
            rows.append({**row, **{a: scores.get((sid, a), "") for a in names}})
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


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    rows = [{k: _neutral(v) for k, v in r.items()} for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_reports(run: GradingRun, course_id: str, selected: list[str]) -> Report:
    """Write grades.csv (from the gradebook) and issues.csv; return the run's Report."""
    columns, rows = export_grades(run.db_url, course_id, selected, run.source_dir)
    write_csv(run.csv_path, columns, rows)
    lms_path = None
    if run.export:  # the LMS's file, beside (not instead of) grades.csv
        lms_path = run.out / f"grades-{run.export}.csv"
        write_csv(lms_path, *lms_grades(run.db_url, course_id, selected, run.export))
    issues = sorted(set(run.issues))
    write_csv(
        run.issues_path,
        ["assignment", "student", "issue", "detail"],
        [
            {"assignment": i.assignment, "student": i.student, "issue": i.kind, "detail": i.detail}
            for i in issues
        ],
    )
    return Report(
        run.out,
        run.db_url,
        run.csv_path,
        run.issues_path,
        selected,
        sorted(run.graded),
        issues,
        rows,
        run.sandbox,
        run.canary,
        lms_path,
    )


# --------------------------------------------------------------------------- kdlib gradebook export


def export_all(
    db_url: str,
    course_dir: Path,
    out: Path,
    assignments: list[str] | None = None,
    csv_path: Path | None = None,
    fmt: str = "grades",
) -> tuple[Path, Path, int]:
    """Write ``grades.csv``, ``issues.csv`` and the feedback pages of ``assignments`` (default:
    every assignment of the course) from the gradebook at ``db_url`` into ``out``. Returns the
    two CSV paths and the number of feedback pages."""
    from kdlib.course.coursedir import (
        config_value,
        load_course_config,
        source_assignments,
    )
    from kdlib.course.gradebook import load_shards

    cfg = load_course_config(course_dir)
    source_dir = course_dir / config_value(cfg, "CourseDirectory", "source_directory", "source")
    course_id = config_value(cfg, "CourseDirectory", "course_id", "")
    names = list(assignments or source_assignments(source_dir))
    columns, rows = export_grades(db_url, course_id, names, source_dir)
    csv_path = csv_path or out / "grades.csv"
    if fmt != "grades":  # the LMS's file, beside (not instead of) grades.csv
        lms_columns, lms_rows = lms_grades(db_url, course_id, names, fmt)
        write_csv(out / f"grades-{fmt}.csv", lms_columns, lms_rows)
    write_csv(csv_path, columns, rows)
    issues, pages = load_shards(db_url)
    issues = [i for i in issues if not assignments or i[0] in names or not i[0]]
    write_csv(
        out / "issues.csv",
        ["assignment", "student", "issue", "detail"],
        [dict(zip(("assignment", "student", "issue", "detail"), i, strict=True)) for i in issues],
    )
    written = 0
    for (assignment, student, notebook), html in sorted(pages.items()):
        if assignment not in names:
            continue
        page = out / "feedback" / student / assignment / f"{notebook}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(html, encoding="utf-8")
        written += 1
    return csv_path, out / "issues.csv", written


def add_arguments(parser, path=("gradebook", "export")) -> None:
    """Flags of ``kdlib gradebook export``."""
    parser.add_argument(
        "assignments",
        nargs="*",
        metavar="ASSIGNMENT",
        help="assignments to export (default: every assignment of the course)",
    )
    parser.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="the gradebook the shards wrote, e.g. postgresql://grader@host/course",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where grades.csv, issues.csv and feedback/ go (default: grading/ "
        "in the course folder)",
    )
    parser.add_argument(
        "--course-dir",
        default=None,
        metavar="DIR",
        help="the course folder (default: the first folder at or above the "
        "current one with nbgrader_config.py)",
    )
    parser.add_argument(
        "--csv",
        default=None,
        metavar="FILE",
        help="where to write the grades (default: <out>/grades.csv)",
    )
    parser.add_argument(
        "--format",
        default="grades",
        choices=("grades", *LMS_FORMATS),
        help="also write <out>/grades-canvas.csv or grades-moodle.csv: the CSV that gradebook "
        "imports (one column per assignment, manual grades included)",
    )


def main(args) -> int:
    """Run ``kdlib gradebook export``; returns the exit status."""
    import sys

    from kdlib.course.coursedir import DEFAULT_OUT, GradingError, find_course_dir
    from kdlib.course.gradebook import GradebookError, check_database, resolve_db_url

    try:
        course = Path(args.course_dir).resolve() if args.course_dir else find_course_dir()
        out = Path(args.out).resolve() if args.out else course / DEFAULT_OUT
        db_url = resolve_db_url(args.db, out)
        check_database(db_url)
        grades, issues, pages = export_all(
            db_url,
            course,
            out,
            args.assignments,
            Path(args.csv).resolve() if args.csv else None,
            args.format,
        )
    except (GradingError, GradebookError) as exc:
        print(f"kdlib gradebook export: {exc}", file=sys.stderr)
        return 2
    print(f"grades:   {grades}")
    if args.format != "grades":
        print(f"{args.format}:   {out / f'grades-{args.format}.csv'}")
    print(f"issues:   {issues}")
    print(f"feedback: {out / 'feedback'} ({pages} page(s))")
    return 0
