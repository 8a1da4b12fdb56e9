"""``kdlib grade`` end to end: a made-up class graded with nbgrader.

Two fixture assignments (tests/fixtures/grading/: solutions with nbgrader metadata, a hidden test
in each) are released with nbgrader into a temporary course; the test then writes a class of
submissions and grades it with the ``kdlib grade`` command, twice, and checks the CSV, the
issues reported, the autograded notebooks, the feedback and the gradebook.

The class (nbgrader layout ``<student>/<assignment>/<notebook>.ipynb``):

    ada  both solutions                     (full marks) + a folder for an unknown assignment
    bob  both releases untouched            (0)
    cyd  01: square wrong                   (-3 = test_square)
         02: argmax wrong on ties only      (-1 = test_argmax, caught by the hidden test)
    dee  01: add unanswered, its locked test edited to pass (-2 = test_add, restored)
         02: solution
    eve  01: square loops forever           (test_square cut at the timeout, -3)
         02: a loop that ignores interrupts (kernel killed: 0, reported)
    fox  01: corrupted file (not JSON)      (reported, not in the CSV); 02: solution
    gus  01: solution under another file name (renamed, full marks), printing a <script>
    hal  a folder for 01 with no notebook   (reported)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from nbgrader.api import Gradebook  # noqa: E402

from kdlib.course import grade as grading  # noqa: E402
from kdlib.course.autograde import TIMEOUT_ENAME  # noqa: E402
from kdlib.course.coursedir import ensure_alembic_on_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grading"
A1, A2 = "01_warmup", "02_lists"
TIMEOUT = 5  # seconds per cell while autograding (the course default is far longer)

# (student, assignment) -> (score, {grade_id: points}); max: 01 = 2 + 3, 02 = 2 + 1
EXPECTED = {
    ("ada", A1): (5, {"test_add": 2, "test_square": 3}),
    ("bob", A1): (0, {"test_add": 0, "test_square": 0}),
    ("cyd", A1): (2, {"test_add": 2, "test_square": 0}),
    ("dee", A1): (3, {"test_add": 0, "test_square": 3}),
    ("eve", A1): (2, {"test_add": 2, "test_square": 0}),
    ("gus", A1): (5, {"test_add": 2, "test_square": 3}),
    ("ada", A2): (3, {"test_mean": 2, "test_argmax": 1}),
    ("bob", A2): (0, {"test_mean": 0, "test_argmax": 0}),
    ("cyd", A2): (2, {"test_mean": 2, "test_argmax": 0}),
    ("dee", A2): (3, {"test_mean": 2, "test_argmax": 1}),
    ("eve", A2): (0, {"test_mean": 0, "test_argmax": 0}),
    ("fox", A2): (3, {"test_mean": 2, "test_argmax": 1}),
}
MAX = {A1: 5, A2: 3}
XSS = (
    "from IPython.display import HTML, display\n"
    'display(HTML(\'<b id="gus">hi</b><script>alert("gus")</script>\'))'
)


# --------------------------------------------------------------------------- helpers


def kdlib_grade(*args, cwd: Path, in_process: bool = False) -> subprocess.CompletedProcess:
    """Run ``kdlib grade ARGS`` from ``cwd``: as a new process, as an instructor would, or in
    this one through the same entry point (saves the seconds nbgrader takes to import)."""
    argv = ["grade", *map(str, args)]
    if not in_process:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        return subprocess.run(
            [sys.executable, "-m", "kdlib", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    from kdlib.course.cli import main

    out, err, here = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def set_cell(nb, grade_id: str, source: str) -> None:
    for cell in nb.cells:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") == grade_id:
            cell.source = source
            return
    raise KeyError(grade_id)


def cell_by_id(nb, grade_id: str):
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


def release_course(root: Path) -> None:
    """``nbgrader generate_assignment`` of the fixtures into root/notebooks (what ``kdlib
    release`` does for the real course), with a throwaway gradebook."""
    from nbgrader.apps import NbGraderAPI

    ensure_alembic_on_path()
    cfg = grading.load_course_config(root)
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = f"sqlite:///{root / 'release.db'}"
    api = NbGraderAPI(config=cfg)
    for name in (A1, A2):
        result = api.generate_assignment(name, force=True, create=True)
        assert result["success"], result.get("log")
    (root / "release.db").unlink()


# --------------------------------------------------------------------------- the class


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    shutil.copytree(FIXTURES, root / "solutions")
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    release_course(root)
    return root


def write_class(course: Path, folder: Path) -> None:
    def src(name):
        return nbformat.read(course / "solutions" / name / f"{name}.ipynb", as_version=4)

    def rel(name):
        return nbformat.read(course / "notebooks" / name / f"{name}.ipynb", as_version=4)

    def put(student, name, nb, filename=None):
        d = folder / student / name
        d.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, d / (filename or f"{name}.ipynb"))

    put("ada", A1, src(A1))
    put("ada", A2, src(A2))
    put("ada", "03_missing", rel(A1), "03_missing.ipynb")  # not an assignment of the course
    put("bob", A1, rel(A1))
    put("bob", A2, rel(A2))

    nb = rel(A1)
    set_cell(nb, "add_answer", "def add(a, b):\n    return a + b")
    set_cell(nb, "square_answer", "def square(x):\n    return 2 * x")
    put("cyd", A1, nb)
    nb = rel(A2)
    set_cell(nb, "mean_answer", "def mean(xs):\n    return sum(xs) / len(xs)")
    # right on the visible test, wrong on ties: only the hidden test catches it
    set_cell(
        nb, "argmax_answer", "def argmax(xs):\n    return len(xs) - 1 - xs[::-1].index(max(xs))"
    )
    put("cyd", A2, nb)

    nb = rel(A1)  # add left unanswered, its test replaced by one that passes
    set_cell(nb, "test_add", 'print("add: ok")')
    set_cell(nb, "square_answer", "def square(x):\n    return x * x")
    put("dee", A1, nb)
    put("dee", A2, src(A2))

    nb = rel(A1)
    set_cell(nb, "add_answer", "def add(a, b):\n    return a + b")
    set_cell(nb, "square_answer", "def square(x):\n    while True:\n        pass")
    put("eve", A1, nb)
    nb = rel(A2)  # a loop that a kernel interrupt cannot stop
    set_cell(
        nb,
        "mean_answer",
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
    )
    put("eve", A2, nb)

    (folder / "fox" / A1).mkdir(parents=True)
    (folder / "fox" / A1 / f"{A1}.ipynb").write_text('{"cells": [ this is not json', "utf-8")
    put("fox", A2, src(A2))

    nb = src(A1)  # an answer cell whose output carries a script
    set_cell(nb, "add_answer", cell_by_id(nb, "add_answer").source + "\n" + XSS)
    put("gus", A1, nb, f"{A1} (1).ipynb")

    (folder / "hal" / A1).mkdir(parents=True)
    (folder / "hal" / A1 / "notes.txt").write_text("forgot to attach the notebook\n", "utf-8")


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    """The class graded twice with the same command (run from the course folder, which the
    command finds by itself); the second run is the one the tests look at."""
    base = tmp_path_factory.mktemp("class")
    subs, out = base / "submissions", base / "out"
    write_class(course, subs)
    before = tree_digest(course / "notebooks"), tree_digest(course / "solutions")
    args = (A1, A2, "--submissions", subs, "--out", out, "--timeout", TIMEOUT)
    first = kdlib_grade(*args, cwd=course)
    first_csv = (out / "grades.csv").read_bytes()
    first_issues = (out / "issues.csv").read_bytes()
    second = kdlib_grade(*args, cwd=course, in_process=True)
    after = tree_digest(course / "notebooks"), tree_digest(course / "solutions")
    return {
        "course": course,
        "subs": subs,
        "out": out,
        "first": first,
        "second": second,
        "first_csv": first_csv,
        "first_issues": first_issues,
        "repo_before": before,
        "repo_after": after,
        "rows": read_csv(out / "grades.csv"),
        "issues": read_csv(out / "issues.csv"),
    }


def row(graded, student, assignment):
    found = [r for r in graded["rows"] if (r["student"], r["assignment"]) == (student, assignment)]
    assert len(found) == 1, (student, assignment, graded["rows"])
    return found[0]


def issues_of(graded, student, assignment, kind):
    return [
        i
        for i in graded["issues"]
        if (i["student"], i["assignment"], i["issue"]) == (student, assignment, kind)
    ]


# --------------------------------------------------------------------------- tests


@pytest.mark.notebooks  # starts Jupyter kernels
def test_command_reports_bad_input_and_exits_1(graded):
    for run in (graded["first"], graded["second"]):
        assert run.returncode == 1, run.stdout + run.stderr
        err = run.stderr
        assert str(graded["subs"] / "fox" / A1 / f"{A1}.ipynb") in err
        assert "not a valid notebook" in err
        assert str(graded["subs"] / "ada" / "03_missing") in err
        assert "not an assignment of the course" in err
        assert str(graded["subs"] / "hal" / A1) in err
        assert "no notebook" in err


@pytest.mark.notebooks  # starts Jupyter kernels
def test_csv_has_every_other_student_with_the_right_scores(graded):
    rows = graded["rows"]
    assert list(rows[0])[:4] == ["student", "assignment", "score", "max_score"]
    assert list(rows[0])[4:] == [
        f"{A1}:test_add",
        f"{A1}:test_square",
        f"{A2}:test_mean",
        f"{A2}:test_argmax",
    ]
    assert {(r["student"], r["assignment"]) for r in rows} == set(EXPECTED)
    for (student, assignment), (score, cells) in EXPECTED.items():
        r = row(graded, student, assignment)
        assert float(r["score"]) == score, r
        assert float(r["max_score"]) == MAX[assignment], r
        for grade_id, points in cells.items():
            assert float(r[f"{assignment}:{grade_id}"]) == points, (grade_id, r)
        other = A2 if assignment == A1 else A1
        assert all(v == "" for k, v in r.items() if k.startswith(other + ":"))


@pytest.mark.notebooks  # starts Jupyter kernels
def test_solution_full_marks_and_untouched_release_zero(graded):
    for assignment in (A1, A2):
        assert float(row(graded, "ada", assignment)["score"]) == MAX[assignment]
        release = row(graded, "bob", assignment)
        assert float(release["score"]) == 0
        assert all(float(v) == 0 for k, v in release.items() if k.startswith(assignment + ":"))


@pytest.mark.notebooks  # starts Jupyter kernels
def test_one_wrong_exercise_loses_exactly_its_points(graded):
    cyd = row(graded, "cyd", A1)
    assert float(cyd["score"]) == MAX[A1] - 3
    assert (float(cyd[f"{A1}:test_add"]), float(cyd[f"{A1}:test_square"])) == (2, 0)
    # 02: the visible test passes; the hidden test nbgrader restores at autograding fails
    cyd = row(graded, "cyd", A2)
    assert float(cyd["score"]) == MAX[A2] - 1
    assert (float(cyd[f"{A2}:test_mean"]), float(cyd[f"{A2}:test_argmax"])) == (2, 0)
    ag = nbformat.read(graded["out"] / "autograded" / "cyd" / A2 / f"{A2}.ipynb", as_version=4)
    test = cell_by_id(ag, "test_argmax")
    assert "assert argmax([2, 7, 7]) == 1" in test.source
    assert any(o.output_type == "error" and o.ename == "AssertionError" for o in test.outputs)


@pytest.mark.notebooks  # starts Jupyter kernels
def test_edited_locked_test_cell_is_restored_and_flagged(graded):
    dee = row(graded, "dee", A1)
    assert float(dee[f"{A1}:test_add"]) == 0
    assert float(dee["score"]) == MAX[A1] - 2
    # flagged by kdlib grade, by name of the cell ...
    flagged = issues_of(graded, "dee", A1, "locked-cell-modified")
    assert len(flagged) == 1 and "test_add" in flagged[0]["detail"]
    assert "test_square" not in flagged[0]["detail"]
    # ... and not for the students who left the tests alone (solution and release alike)
    assert not [
        i
        for i in graded["issues"]
        if i["issue"] == "locked-cell-modified" and i["student"] != "dee"
    ]
    # nbgrader restored the cell from the gradebook (hidden test included) before running it
    submitted = nbformat.read(graded["subs"] / "dee" / A1 / f"{A1}.ipynb", as_version=4)
    assert cell_by_id(submitted, "test_add").source == 'print("add: ok")'
    ag = nbformat.read(graded["out"] / "autograded" / "dee" / A1 / f"{A1}.ipynb", as_version=4)
    restored = cell_by_id(ag, "test_add")
    with Gradebook(f"sqlite:///{graded['out'] / 'gradebook.db'}", "kd-course") as gb:
        assert restored.source == gb.find_source_cell("test_add", A1, A1).source
    assert "assert add(10, 5) == 15" in restored.source
    assert any(
        o.output_type == "error" and o.ename == "NotImplementedError" for o in restored.outputs
    )
    # nbgrader's own record of it: the checksum warning in the autograde log
    log = (graded["out"] / "logs" / A1 / "dee.log").read_text()
    assert "Attribute 'checksum' for cell test_add has changed" in log


@pytest.mark.notebooks  # starts Jupyter kernels
def test_infinite_loop_is_cut_and_the_class_still_graded(graded):
    # a plain loop: the kernel is interrupted at the per-cell timeout, the notebook goes on
    eve = row(graded, "eve", A1)
    assert float(eve["score"]) == MAX[A1] - 3
    assert (float(eve[f"{A1}:test_add"]), float(eve[f"{A1}:test_square"])) == (2, 0)
    cut = issues_of(graded, "eve", A1, "cell-timeout")
    assert len(cut) == 1 and "test_square" in cut[0]["detail"]
    ag = nbformat.read(graded["out"] / "autograded" / "eve" / A1 / f"{A1}.ipynb", as_version=4)
    assert [o.ename for o in cell_by_id(ag, "test_square").outputs if o.output_type == "error"][
        -1
    ] == TIMEOUT_ENAME
    # a loop that ignores the interrupt: nbgrader gives up on the notebook and kills the
    # kernel; the student keeps a row, scored 0, and is reported for a manual look
    assert float(row(graded, "eve", A2)["score"]) == 0
    failed = issues_of(graded, "eve", A2, "autograde-failed")
    assert len(failed) == 1 and "interrupt" in failed[0]["detail"]
    # those graded after eve were graded
    assert float(row(graded, "gus", A1)["score"]) == MAX[A1]
    assert float(row(graded, "fox", A2)["score"]) == MAX[A2]


@pytest.mark.notebooks  # starts Jupyter kernels
def test_corrupted_notebook_reported_by_name_and_left_out(graded):
    bad = issues_of(graded, "fox", A1, "invalid-notebook")
    assert len(bad) == 1
    assert str(graded["subs"] / "fox" / A1 / f"{A1}.ipynb") in bad[0]["detail"]
    assert not [r for r in graded["rows"] if (r["student"], r["assignment"]) == ("fox", A1)]
    assert issues_of(graded, "ada", "03_missing", "unknown-assignment")
    assert issues_of(graded, "hal", A1, "no-notebook")
    assert not (graded["out"] / "submitted" / "fox" / A1).exists()


@pytest.mark.notebooks  # starts Jupyter kernels
def test_rerun_gives_the_same_csv_and_no_duplicates(graded):
    out = graded["out"]
    assert (out / "grades.csv").read_bytes() == graded["first_csv"]
    assert (out / "issues.csv").read_bytes() == graded["first_issues"]
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "kd-course") as gb:
        for assignment in (A1, A2):
            students = [s.student.id for s in gb.find_assignment(assignment).submissions]
            assert sorted(students) == sorted(s for s, a in EXPECTED if a == assignment)


@pytest.mark.notebooks  # starts Jupyter kernels
def test_feedback_html_for_each_graded_student(graded):
    for (student, assignment), (score, _) in EXPECTED.items():
        html = graded["out"] / "feedback" / student / assignment / f"{assignment}.html"
        if (student, assignment) == ("eve", A2):  # not autograded: nothing to give back
            assert not html.exists()
            continue
        assert html.is_file(), html
        text = html.read_text(encoding="utf-8")
        assert f"Score: {float(score):.1f} / {float(MAX[assignment]):.1f}" in text, student


@pytest.mark.notebooks  # starts Jupyter kernels
def test_feedback_html_is_sanitized(graded):
    """nbgrader_config.py sets HTMLExporter.sanitize_html: a student's output cannot put a
    script into the feedback file an instructor or a student opens."""
    html = (graded["out"] / "feedback" / "gus" / A1 / f"{A1}.html").read_text(encoding="utf-8")
    assert ">hi</b>" in html  # the output is there, its script is not
    assert '<script>alert("gus")' not in html


@pytest.mark.notebooks  # starts Jupyter kernels
def test_grading_leaves_the_course_folder_alone(graded):
    assert graded["repo_after"] == graded["repo_before"]
    leftovers = [p for p in (graded["course"] / "grading").rglob("*")]
    assert leftovers == []  # everything went to --out
    assert not (graded["course"] / "gradebook.db").exists()


@pytest.mark.notebooks  # starts Jupyter kernels
def test_flat_layout_with_a_database_url(course, tmp_path):
    subs = tmp_path / "flat"
    (subs / A1).mkdir(parents=True)
    shutil.copy(course / "solutions" / A1 / f"{A1}.ipynb", subs / A1 / "ada.ipynb")
    shutil.copy(course / "notebooks" / A1 / f"{A1}.ipynb", subs / "bob.ipynb")
    (subs / A2).mkdir()
    shutil.copy(course / "solutions" / A2 / f"{A2}.ipynb", subs / A2 / "cyd.ipynb")  # not named
    (subs / "99_nope").mkdir()
    shutil.copy(course / "solutions" / A1 / f"{A1}.ipynb", subs / "99_nope" / "dan.ipynb")
    db = tmp_path / "books" / "course.sqlite"
    out = tmp_path / "out"
    run = kdlib_grade(
        A1,
        "--submissions",
        subs,
        "--out",
        out,
        "--db",
        f"sqlite:///{db}",
        "--course-dir",
        course,
        "--no-feedback",
        "--timeout",
        TIMEOUT,
        cwd=tmp_path,
        in_process=True,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert str(subs / "99_nope") in run.stderr
    rows = read_csv(out / "grades.csv")
    assert [(r["student"], r["assignment"], float(r["score"])) for r in rows] == [
        ("ada", A1, 5.0),
        ("bob", A1, 0.0),
    ]
    assert db.is_file() and not (out / "gradebook.db").exists()
    with Gradebook(f"sqlite:///{db}", "kd-course") as gb:
        assert gb.find_submission(A1, "ada").score == 5
    assert (out / "submitted" / "bob" / A1 / f"{A1}.ipynb").is_file()
    assert not (out / "feedback").exists()
    # what `nbgrader collect` leaves in <out>/submitted is graded in place, nothing deleted
    kept = tree_digest(out / "submitted")
    run = kdlib_grade(
        A1,
        "--submissions",
        out / "submitted",
        "--out",
        out,
        "--db",
        f"sqlite:///{db}",
        "--course-dir",
        course,
        "--no-feedback",
        "--timeout",
        TIMEOUT,
        cwd=tmp_path,
        in_process=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_csv(out / "grades.csv") == rows
    assert tree_digest(out / "submitted") == kept


def test_usage_errors_exit_2(course, tmp_path, monkeypatch, capsys):
    from kdlib.course.cli import main

    (tmp_path / "subs").mkdir()
    assert (
        main(
            [
                "grade",
                "07_nope",
                "--submissions",
                str(tmp_path / "subs"),
                "--out",
                str(tmp_path / "o"),
                "--course-dir",
                str(course),
            ]
        )
        == 2
    )
    assert "unknown assignment 07_nope" in capsys.readouterr().err
    assert (
        main(
            [
                "grade",
                "--submissions",
                str(tmp_path / "missing"),
                "--course-dir",
                str(course),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "grade",
                "--submissions",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--course-dir",
                str(course),
            ]
        )
        == 2
    )
    assert "overlap" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # no nbgrader_config.py here or above
    assert main(["grade", "--submissions", str(tmp_path / "subs")]) == 2
    assert "nbgrader_config.py" in capsys.readouterr().err


def test_default_out_is_where_the_course_config_puts_nbgrader_folders():
    """``kdlib grade`` with no --out/--db writes exactly where nbgrader_config.py sends the
    nbgrader commands (formgrader, export, generate_feedback work on the same gradebook)."""
    cfg = grading.load_course_config(REPO)
    cd = cfg.CourseDirectory
    assert (cd.source_directory, cd.release_directory) == ("solutions", "notebooks")
    out = REPO / grading.DEFAULT_OUT
    assert REPO / cd.submitted_directory == out / "submitted"
    assert REPO / cd.autograded_directory == out / "autograded"
    assert REPO / cd.feedback_directory == out / "feedback"
    assert cd.db_url == f"sqlite:///{out / 'gradebook.db'}"
    assert 0 < cfg.Execute.timeout <= 3600 and cfg.Execute.interrupt_on_timeout


def released_course_assignments() -> list[str]:
    """Assignments of the real course with both a solution and a release."""
    release = REPO / "notebooks"
    if not release.is_dir():
        return []
    return sorted(
        d.name
        for d in release.iterdir()
        if d.is_dir() and list(d.glob("*.ipynb")) and (REPO / "solutions" / d.name).is_dir()
    )


def _solution_and_release(names, subs: Path) -> Path:
    """Submissions of the real assignments ``names``: the solution as student ada's, the
    untouched release as bob's."""
    for name in names:
        for student, folder in (("ada", "solutions"), ("bob", "notebooks")):
            shutil.copytree(
                REPO / folder / name,
                subs / student / name,
                ignore=shutil.ignore_patterns(".ipynb_checkpoints"),
            )
    return subs


@pytest.mark.slow
@pytest.mark.notebooks
def test_real_course_assignments_solution_full_release_zero(tmp_path):
    """Two real assignments graded from the repository itself (fast mode: nbgrader sets
    NBGRADER_EXECUTION, which the notebooks' parameters cell reads): the solution gets full
    marks but for its written answers (which wait for a grader), the untouched release 0."""
    names = released_course_assignments()[:2]
    if len(names) < 2:
        pytest.skip("fewer than two course assignments are released in notebooks/ yet")
    subs = _solution_and_release(names, tmp_path / "subs")
    out = tmp_path / "out"
    run = kdlib_grade(
        *names,
        "--submissions",
        subs,
        "--out",
        out,
        "--course-dir",
        REPO,
        "--export",
        "moodle",
        cwd=tmp_path,
        in_process=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    assert set(rows) == {(s, a) for s in ("ada", "bob") for a in names}
    moodle = {r["ID number"]: r for r in read_csv(out / "grades-moodle.csv")}
    assert set(moodle) == {"ada", "bob"}
    for name in names:  # the LMS's file: one column per assignment, the same totals
        assert [moodle[s][name] for s in ("ada", "bob")] == [
            rows[(s, name)]["score"] for s in ("ada", "bob")
        ]
    for name in names:
        solution, release = rows[("ada", name)], rows[("bob", name)]
        written = _written_points(REPO / "solutions" / name / f"{name}.ipynb")
        assert float(solution["max_score"]) > written
        assert float(solution["score"]) == float(solution["max_score"]) - written, solution
        assert float(release["score"]) == 0, release
        cells = [k for k in release if k.startswith(name + ":")]
        assert cells and all(float(release[k]) == 0 for k in cells)
    kinds = {i["issue"] for i in read_csv(out / "issues.csv")}
    assert not kinds & {"locked-cell-modified", "cell-timeout", "autograde-failed"}, kinds


@pytest.mark.slow
@pytest.mark.notebooks
def test_the_courses_own_code_raises_no_issue_on_any_notebook(tmp_path):
    """Every released assignment, the solution graded as one student's submission and the
    untouched release as another's: full marks and 0, and not one row in issues.csv (the
    course's own code, and what kdlib and the libraries do by themselves, are never flagged).
    The canary expects the same of each assignment; it is skipped here, having nothing to add
    to these two submissions."""
    names = released_course_assignments()
    if not names:
        pytest.skip("no course assignment is released in notebooks/ yet")
    subs = _solution_and_release(names, tmp_path / "subs")
    out = tmp_path / "out"
    run = kdlib_grade(
        *names,
        "--submissions",
        subs,
        "--out",
        out,
        "--course-dir",
        REPO,
        "--jobs",
        2,
        "--no-feedback",
        "--skip-canary",
        cwd=tmp_path,
        in_process=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert read_csv(out / "issues.csv") == []
    rows = {(r["student"], r["assignment"]): r for r in read_csv(out / "grades.csv")}
    for name in names:
        # full marks but for the written answers, which wait for a grader
        written = _written_points(REPO / "solutions" / name / f"{name}.ipynb")
        top = float(rows[("ada", name)]["max_score"])
        assert float(rows[("ada", name)]["score"]) == top - written, name
        assert float(rows[("bob", name)]["score"]) == 0


def _written_points(path) -> float:
    """The points of a notebook's manually graded written answers (markdown answer cells)."""
    import nbformat

    return sum(
        float(c.metadata["nbgrader"].get("points", 0))
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "markdown"
        and c.metadata.get("nbgrader", {}).get("grade")
        and c.metadata["nbgrader"].get("solution")
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"export": "blackboard"}, "--export must be one of canvas, moodle, got 'blackboard'"),
        ({"export": "canvas", "shard": (0, 2)}, "--export with --shard"),
    ],
)
def test_an_export_kdlib_grade_cannot_write_is_refused_before_grading(tmp_path, kwargs, message):
    with pytest.raises(grading.GradingError, match=re.escape(message)):
        grading.grade(tmp_path / "nowhere", course_dir=tmp_path, **kwargs)
