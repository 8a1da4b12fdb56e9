"""`kdlib release` on a small course of its own: cleaning, generating, checking."""

import shutil
from pathlib import Path

import nbformat

from kdlib.course.cli import main
from kdlib.course.release import CHECK_MARK, clean_solution, release

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "grading"


def _course(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    shutil.copytree(FIXTURES, tmp_path / "solutions")
    return tmp_path


def test_clean_solution_keeps_only_checked_outputs():
    nb = nbformat.v4.new_notebook()
    kept = nbformat.v4.new_code_cell(f"{CHECK_MARK}\nprint(1)", execution_count=3)
    kept.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    dropped = nbformat.v4.new_code_cell("print(2)", execution_count=4)
    dropped.outputs = [nbformat.v4.new_output("stream", name="stdout", text="2\n")]
    dropped.metadata["papermill"] = {"duration": 1.0}
    nb.cells = [kept, dropped]
    nb.metadata["papermill"] = {"parameters": {}}
    clean = clean_solution(nb)
    assert clean.cells[0].outputs[0].text == "1\n" and clean.cells[0].execution_count == 1
    assert clean.cells[1].execution_count is None
    assert clean.cells[1].outputs == [] and "papermill" not in clean.cells[1].metadata
    assert set(clean.metadata) == {"kernelspec", "language_info"}
    # outputs can be taken from an executed copy
    executed = nbformat.from_dict(nb)
    executed.cells[0].outputs[0].text = "one\n"
    assert clean_solution(nb, keep_from=executed).cells[0].outputs[0].text == "one\n"


def test_release_generates_checks_and_is_idempotent(tmp_path):
    course = _course(tmp_path)
    changed = release(course_dir=course, echo=lambda *a: None)
    assert "notebooks/01_warmup" in changed and "notebooks/02_lists" in changed
    student = nbformat.read(course / "notebooks/01_warmup/01_warmup.ipynb", as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert "raise NotImplementedError()" in text and "BEGIN SOLUTION" not in text
    assert "BEGIN HIDDEN TESTS" not in text
    assert not (course / "grading" / "gradebook.db").exists()  # the course gradebook untouched
    assert release(course_dir=course, echo=lambda *a: None) == []
    assert main(["release", "--check", "--course-dir", str(course)]) == 0
    # a hand edit of the release is caught, and a stale assignment folder too
    path = course / "notebooks/02_lists/02_lists.ipynb"
    path.write_text(path.read_text().replace("NotImplementedError", "NotImplemented"))
    (course / "notebooks/99_old").mkdir()
    assert main(["release", "--check", "--course-dir", str(course)]) == 1
    assert main(["release", "--course-dir", str(course)]) == 0
    assert not (course / "notebooks/99_old").exists()
    assert main(["release", "--check", "--course-dir", str(course)]) == 0
