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
