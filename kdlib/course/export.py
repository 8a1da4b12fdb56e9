"""What ``kdlib grade`` writes from the gradebook: ``grades.csv`` (one row per student and
assignment, then the points of every graded cell) and ``issues.csv``; cells a spreadsheet would
run as a formula are neutralised.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdlib.course.submissions import Issue, read_notebook

if TYPE_CHECKING:
    from kdlib.course.grade import GradingRun


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
    )
