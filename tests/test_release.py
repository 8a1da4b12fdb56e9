"""`kdlib release` on a small course of its own: cleaning, generating, checking."""

import shutil
from pathlib import Path

import nbformat
import pytest

from kdlib.course.cli import main
from kdlib.course.release import CHECK_MARK, clean_solution, release

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "grading"


def _course(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
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


# ---------------------------------------------------------------------------------------------
# the student edition and nbgrader's exchange


def _tree(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.parts
    }


def test_student_edition_of_the_course_leaks_nothing():
    from kdlib.course.release import LEAK_MARKERS, student_edition_files

    files = student_edition_files(ROOT)
    tops = {rel.split("/")[0] for rel in files}
    assert {
        "notebooks",
        "kdlib",
        "data",
        "tests",
        "README.md",
        "environment.yml",
        "pyproject.toml",
        "nbgrader_config.py",
        ".gitignore",
    } <= tops
    assert not tops & {"solutions", "grading", "benchmarks", "CONTRIBUTING.md", ".ci"}, tops
    for rel, content in files.items():
        text = content.decode("utf-8", errors="replace")
        assert not [m for m in LEAK_MARKERS if m in text], rel
        assert "exercise_answers" not in rel and "gradebook" not in rel, rel
    # the notebooks are exactly the release in notebooks/ (whose leaks test_notebooks checks)
    released = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "notebooks").rglob("*.ipynb")
        if ".ipynb_checkpoints" not in p.parts
    }
    assert {rel for rel in files if rel.startswith("notebooks/")} == released
    for rel in released:
        assert files[rel] == (ROOT / rel).read_bytes()
    assert sorted(rel for rel in files if rel.startswith("kdlib/course/")) == [
        "kdlib/course/__init__.py",
        "kdlib/course/cli.py",
        "kdlib/course/results.py",
    ]
    readme = files["README.md"].decode()
    assert "For instructors" not in readme and "kdlib grade" not in readme
    assert "solutions/" not in readme
    assert "nbgrader validate" in readme and "Submit" in readme and "pip install" in readme
    for rel in (r for r in files if r.startswith("tests/test_")):
        text = files[rel].decode()
        assert "solutions" not in text and "kdlib.course" not in text, rel
    pyproject = files["pyproject.toml"].decode()
    assert 'testpaths = ["tests"]' in pyproject and "solutions" not in pyproject


def test_student_edition_rerun_gives_the_same_tree_and_keeps_git(tmp_path):
    from kdlib.course.release import student_edition

    dest = tmp_path / "kd-course-students"
    (dest / ".git").mkdir(parents=True)
    (dest / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (dest / "stale.txt").write_text("from an older edition")
    first = student_edition(dest, course_dir=ROOT)
    tree = _tree(dest)
    assert "stale.txt" not in tree and (dest / ".git" / "HEAD").exists()
    assert sorted(tree) == first
    assert student_edition(dest, course_dir=ROOT) == first and _tree(dest) == tree
    with pytest.raises(ValueError, match="outside"):
        student_edition(ROOT / "build" / "students", course_dir=ROOT)


@pytest.mark.notebooks
def test_student_edition_installs_and_runs_up_to_the_first_exercise(tmp_path, python_without_kdlib):
    """In a fresh virtual environment that reuses this one's packages (torch, Jupyter) but not
    its kdlib, the student edition installs, its kdlib is the one imported, its `kdlib` command
    offers no instructor subcommand, and a notebook runs up to its first exercise."""
    import subprocess

    from kdlib.course.release import student_edition

    edition = tmp_path / "edition"
    student_edition(edition, course_dir=ROOT)
    python, env = python_without_kdlib
    env_dir = python.parent.parent
    env.update(KDLIB_FAST="1", MPLBACKEND="agg", OMP_NUM_THREADS="1", KDLIB_PROGRESS="0")

    def run(*args, cwd=tmp_path):
        proc = subprocess.run(
            [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout

    run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        edition,
    )
    where = run(python, "-c", "import kdlib, kdlib.exercises; print(kdlib.__file__)")
    assert where.strip().startswith(str(env_dir)), where
    helptext = run(python, "-m", "kdlib", "--help")
    assert "device" in helptext and "grade" not in helptext and "release" not in helptext
    check = f"""
import nbformat, sys
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
nb = nbformat.read({str(edition / "notebooks/02_formal_loss/02_formal_loss.ipynb")!r}, 4)
first = next(i for i, c in enumerate(nb.cells)
             if c.cell_type == 'code' and 'raise NotImplementedError()' in c.source)
nb.cells = nb.cells[:first + 2]  # the answer cell defines a function; its test calls it
client = NotebookClient(nb, kernel_name='python3', timeout=600,
                        resources={{'metadata': {{'path': {str(tmp_path)!r}}}}})
try:
    client.execute()
except CellExecutionError as err:
    assert err.ename == 'NotImplementedError', err
    print('stopped at the first exercise')
else:
    sys.exit('the first exercise did not stop the notebook')
"""
    assert "stopped at the first exercise" in run(python, "-c", check)


@pytest.mark.notebooks
def test_nbgrader_exchange_release_list_fetch_submit_collect(tmp_path):
    """The course's nbgrader_config.py gives nbgrader an exchange (grading/exchange, or
    KDLIB_EXCHANGE): an instructor releases, a student working in the student edition lists,
    fetches and submits, the instructor collects into grading/submitted."""
    import os
    import subprocess

    from kdlib.course.release import student_edition

    course = _course(tmp_path / "course")
    release(course_dir=course, echo=lambda *a: None)
    student = tmp_path / "student"
    student_edition(student, course_dir=course)
    exchange = course / "grading" / "exchange"
    env = {k: v for k, v in os.environ.items() if k != "KDLIB_EXCHANGE"}

    def nbgrader(*args, cwd, extra=None):
        proc = subprocess.run(
            ["nbgrader", *args],
            cwd=cwd,
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    nbgrader("release_assignment", "01_warmup", cwd=course)  # exchange root from the config
    assert (exchange / "kd-course" / "outbound" / "01_warmup" / "01_warmup.ipynb").exists()
    as_student = {"KDLIB_EXCHANGE": str(exchange)}
    assert "kd-course 01_warmup" in nbgrader("list", cwd=student, extra=as_student)
    nbgrader("fetch_assignment", "01_warmup", cwd=student, extra=as_student)
    assert (student / "01_warmup" / "01_warmup.ipynb").exists()
    nbgrader("submit", "01_warmup", cwd=student, extra=as_student)
    nbgrader("collect", "01_warmup", cwd=course)
    assert list((course / "grading" / "submitted").glob("*/01_warmup/01_warmup.ipynb"))
