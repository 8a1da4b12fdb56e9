"""Manual grades reach the gradebooks of an LMS: ``kdlib gradebook export --format canvas|moodle``
writes the CSV that Canvas or Moodle imports (the layouts are cited in kdlib/course/export.py)."""

import csv

import pytest

pytest.importorskip("nbgrader")

from nbgrader.api import Gradebook  # noqa: E402

from kdlib.course.export import CANVAS_COLUMNS, MOODLE_COLUMNS, lms_grades  # noqa: E402


@pytest.fixture()
def gradebook(tmp_path):
    """Two assignments (an autograded cell and a written answer graded by hand), three
    students: one with both submissions, one with one, one with none."""
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url, "kd-course") as gb:
        for name in ("03_training_loop", "11_vit_and_edge"):
            gb.add_assignment(name)
            gb.add_notebook(name, name)
            gb.add_grade_cell("test", name, name, max_score=2, cell_type="code")
            gb.add_grade_cell("written", name, name, max_score=3, cell_type="markdown")
            gb.add_solution_cell("written", name, name)
        gb.add_student("ada", first_name="Ada", last_name="Lovelace", email="ada@uni.example")
        gb.add_student("bob", email="bob@uni.example", lms_user_id="4711")
        gb.add_student("cy")
        for student, assignment, auto, manual in [
            ("ada", "03_training_loop", 2, 2.5),
            ("ada", "11_vit_and_edge", 1, 3),
            ("bob", "11_vit_and_edge", 0, 1.5),
        ]:
            gb.add_submission(assignment, student)
            test = gb.find_grade("test", assignment, assignment, student)
            test.auto_score = auto
            written = gb.find_grade("written", assignment, assignment, student)
            written.manual_score = manual  # what a grader enters in the formgrader
            gb.db.commit()
    return url


def read(columns, rows, tmp_path):
    from kdlib.course.export import write_csv

    path = tmp_path / "out.csv"
    write_csv(path, columns, rows)
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_canvas_layout_has_the_five_student_columns_points_possible_and_one_column_per_assignment(
    gradebook, tmp_path
):
    columns, rows = lms_grades(
        gradebook, "kd-course", ["03_training_loop", "11_vit_and_edge", "missing"], "canvas"
    )
    table = read(columns, rows, tmp_path)
    assert table[0] == [
        "Student",
        "ID",
        "SIS User ID",
        "SIS Login ID",
        "Section",
        "03_training_loop",
        "11_vit_and_edge",
    ]
    assert CANVAS_COLUMNS == table[0][:5]
    assert table[1][0].strip() == "Points Possible" and table[1][5:] == ["5", "5"]
    by_sis = {row[2]: row for row in table[2:]}
    assert set(by_sis) == {"ada", "bob", "cy"}
    # the manual grade is in the total: 2 (autograded) + 2.5 (by hand)
    assert by_sis["ada"][0] == "Lovelace, Ada" and by_sis["ada"][5:] == ["4.5", "4"]
    assert by_sis["bob"][1] == "4711" and by_sis["bob"][5:] == ["", "1.5"]
    assert by_sis["cy"][5:] == ["", ""]


def test_moodle_layout_identifies_students_by_id_number_and_email(gradebook, tmp_path):
    columns, rows = lms_grades(
        gradebook, "kd-course", ["03_training_loop", "11_vit_and_edge"], "moodle"
    )
    table = read(columns, rows, tmp_path)
    assert table[0] == MOODLE_COLUMNS + ["03_training_loop", "11_vit_and_edge"]
    assert table[0][:4] == ["First name", "Last name", "ID number", "Email address"]
    by_id = {row[2]: row for row in table[1:]}
    assert by_id["ada"] == ["Ada", "Lovelace", "ada", "ada@uni.example", "4.5", "4"]
    assert by_id["bob"][3:] == ["bob@uni.example", "", "1.5"]
    assert len(table) == 4  # a header and one row per student, no points row


def test_an_unknown_format_is_refused_by_name(gradebook):
    with pytest.raises(ValueError, match="format must be one of canvas, moodle"):
        lms_grades(gradebook, "kd-course", ["03_training_loop"], "blackboard")


def test_the_command_offers_the_formats():
    from kdlib.course.cli import build_parser

    parser = build_parser(["gradebook", "export", "--db", "sqlite:///x.db", "--format", "canvas"])
    args = parser.parse_args(
        ["gradebook", "export", "--db", "sqlite:///x.db", "--format", "canvas"]
    )
    assert args.format == "canvas"
    with pytest.raises(SystemExit):
        parser.parse_args(["gradebook", "export", "--db", "sqlite:///x.db", "--format", "excel"])


# ------------------------------------------------------------- the whole path, in a browser

MODEL = "MODEL-ANSWER-7f3a: because the temperature flattens the teacher's distribution"
STUDENT_TEXT = "The soft targets carry the teacher's similarities between classes."
COMMENT = "Good: names the similarities; misses the temperature (GRADER-NOTE-91c2)."


def _written_course(root):
    """A course of one assignment: a function (autograded, 1 point) and a written answer
    graded by hand (3 points), its model answer and rubric in the solution block."""
    import shutil
    from pathlib import Path

    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from kdlib.course.coursedir import ensure_alembic_on_path, load_course_config

    def meta(grade_id, solution, grade, locked=False, points=None):
        m = {"grade_id": grade_id, "solution": solution, "grade": grade, "locked": locked}
        m["schema_version"] = 3
        if points is not None:
            m["points"] = points
        return {"nbgrader": m}

    nb = new_notebook(
        cells=[
            new_code_cell(
                "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION",
                metadata=meta("double_answer", True, False),
            ),
            new_code_cell(
                "assert double(2) == 4\nprint('ok')",
                metadata=meta("test_double", False, True, locked=True, points=1),
            ),
            new_markdown_cell(
                "In two sentences: why does a student learn more from soft targets?",
                metadata=meta("question", False, False, locked=True),
            ),
            new_markdown_cell(
                f"### BEGIN SOLUTION\n{MODEL}\n\nRubric (3 points): 2 for the similarities "
                "between classes, 1 for the temperature.\n### END SOLUTION",
                metadata=meta("why_written", True, True, points=3),
            ),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    name = "09_written"
    (root / "solutions" / name).mkdir(parents=True)
    nbformat.write(nb, root / "solutions" / name / f"{name}.ipynb")
    repo = Path(__file__).resolve().parents[1]
    shutil.copy(repo / "nbgrader_config.py", root / "nbgrader_config.py")
    from nbgrader.apps import NbGraderAPI

    ensure_alembic_on_path()
    cfg = load_course_config(root)
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = f"sqlite:///{root / 'release.db'}"
    result = NbGraderAPI(config=cfg).generate_assignment(name, force=True, create=True)
    assert result["success"], result.get("log")
    (root / "release.db").unlink()
    return name


def _kdlib_grade(course, *args):
    import contextlib
    import io
    import os

    from kdlib.course.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(course)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["grade", *map(str, args)])
    finally:
        os.chdir(here)
    assert code == 0, out.getvalue() + err.getvalue()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.notebooks
def test_a_grader_scores_a_written_answer_in_the_formgrader_and_kdlib_grade_keeps_it(tmp_path):
    """kdlib grade autogrades; a grader enters a score and a comment for the written answer in
    nbgrader's formgrader (chromium); a second kdlib grade keeps them, grades.csv adds them
    up and the feedback page shows them; the model answer is in the graders' rubric file and
    in no released notebook."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    import nbformat

    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("needs chromium (Debian's package 'chromium')")
    course = tmp_path / "course"
    name = _written_course(course)
    released = nbformat.read(course / "notebooks" / name / f"{name}.ipynb", as_version=4)
    assert MODEL not in nbformat.writes(released)  # never released
    for cell in released.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id == "double_answer":
            cell.source = "def double(x):\n    return x + x"
        elif grade_id == "why_written":
            cell.source = STUDENT_TEXT
    subs = tmp_path / "collected"
    (subs / "ada" / name).mkdir(parents=True)
    nbformat.write(released, subs / "ada" / name / f"{name}.ipynb")
    grading = course / "grading"  # the folders nbgrader_config.py names, as the formgrader reads

    _kdlib_grade(course, name, "--submissions", subs, "--timeout", 120, "--skip-canary")
    rubric = (grading / "rubrics" / name / f"{name}.md").read_text("utf-8")
    assert MODEL in rubric and "why_written (3 points)" in rubric and "Rubric" in rubric
    row = next(csv.DictReader(open(grading / "grades.csv", encoding="utf-8")))
    assert (row["score"], row["max_score"], row[f"{name}:why_written"]) == ("1", "4", "0")
    with Gradebook(f"sqlite:///{grading / 'gradebook.db'}", "kd-course") as gb:
        snb = gb.find_submission_notebook(name, name, "ada")
        assert snb.needs_manual_grade
        submission_id = snb.id

    port, token = _free_port(), "kdlib-test-token"
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "server", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--allow-root", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={course}"],
        cwd=course, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            assert server.poll() is None, "the Jupyter server exited"
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page()
            calls = []  # the formgrader's saves: (method, url, status)
            page.on(
                "response",
                lambda r: (
                    calls.append((r.request.method, r.url, r.status)) if "/api/" in r.url else None
                ),
            )
            page.goto(f"{base}/login", timeout=120_000)  # log in with the token, as a grader
            page.fill("input[name=password]", token)
            page.click("button[type=submit]")
            page.wait_for_load_state("networkidle", timeout=120_000)
            page.goto(
                f"{base}/formgrader/submissions/{submission_id}/",
                wait_until="networkidle",
                timeout=120_000,
            )
            page.wait_for_selector("#why_written", timeout=60_000)
            assert STUDENT_TEXT in page.content()  # the grader reads the student's answer
            page.fill("#why_written", "2.5")
            page.press("#why_written", "Tab")
            page.fill("#why_written-comment", COMMENT)
            page.press("#why_written-comment", "Tab")
            deadline = time.time() + 60
            while time.time() < deadline:
                with Gradebook(f"sqlite:///{grading / 'gradebook.db'}", "kd-course") as gb:
                    grade = gb.find_grade("why_written", name, name, "ada")
                    comment = gb.find_comment("why_written", name, name, "ada")
                    saved = (grade.manual_score, comment.manual_comment)
                if saved == (2.5, COMMENT):
                    break
                time.sleep(0.5)
            assert saved == (2.5, COMMENT), calls
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)

    _kdlib_grade(
        course, name, "--submissions", subs, "--timeout", 120, "--skip-canary", "--export", "canvas"
    )
    with Gradebook(f"sqlite:///{grading / 'gradebook.db'}", "kd-course") as gb:
        grade = gb.find_grade("why_written", name, name, "ada")
        assert grade.manual_score == 2.5 and not grade.needs_manual_grade
        assert gb.find_comment("why_written", name, name, "ada").manual_comment == COMMENT
        assert gb.find_submission(name, "ada").score == 3.5
    row = next(csv.DictReader(open(grading / "grades.csv", encoding="utf-8")))
    assert (row["score"], row[f"{name}:why_written"]) == ("3.5", "2.5")
    canvas = list(csv.reader(open(grading / "grades-canvas.csv", encoding="utf-8")))
    assert canvas[0] == [*CANVAS_COLUMNS, name]  # the LMS's file, the manual grade included
    assert canvas[1][0].strip() == "Points Possible" and canvas[1][5] == "4"
    assert canvas[2][2] == "ada" and canvas[2][5] == "3.5"
    page = (grading / "feedback" / "ada" / name / f"{name}.html").read_text("utf-8")
    assert "GRADER-NOTE-91c2" in page and "2.5" in page
    assert MODEL not in page  # the feedback shows the student's answer, not the model answer
