"""``kdlib grade`` before and around the class: the canary, ``--skip-canary``, and the
resource limits (``--memory-limit``, ``--file-limit``).

- A grading environment in which the kernel cannot import kdlib (kdlib's folder left out of
  the sandbox, as when an editable install points at a checkout the sandbox does not show)
  stops at the canary, before the gradebook exists, with one line naming kdlib and where the
  grader imports it from; exit status 3.
- ``--skip-canary`` is said in the output.
- A submission that allocates past ``--memory-limit`` or writes a file past ``--file-limit``
  is reported (``resource-limit``) and scored 0 pending a manual grade; the rest of the class
  is graded as usual.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from nbgrader.api import Gradebook  # noqa: E402
from test_grading import (  # noqa: E402
    A1,
    FIXTURES,
    REPO,
    kdlib_grade,
    read_csv,
    release_course,
    set_cell,
)

from kdlib.course import grade as grading  # noqa: E402

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "grading_hostile"
A3 = "03_tensors"  # its tests import kdlib
TIMEOUT = 20


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    from nbgrader.apps import NbGraderAPI

    root = tmp_path_factory.mktemp("limits-course")
    shutil.copytree(FIXTURES, root / "solutions")
    shutil.copytree(HOSTILE / A3, root / "solutions" / A3)
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    release_course(root)
    cfg = grading.load_course_config(root)
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = f"sqlite:///{root / 'release.db'}"
    assert NbGraderAPI(config=cfg).generate_assignment(A3, force=True, create=True)["success"]
    (root / "release.db").unlink()
    return root


def put(subs: Path, student: str, course: Path, folder: str, name: str, edit=None) -> None:
    nb = nbformat.read(course / folder / name / f"{name}.ipynb", as_version=4)
    if edit:
        edit(nb)
    (subs / student / name).mkdir(parents=True)
    nbformat.write(nb, subs / student / name / f"{name}.ipynb")


@pytest.mark.notebooks  # starts Jupyter kernels
def test_a_kernel_without_kdlib_stops_at_the_canary(course, tmp_path, monkeypatch):
    from kdlib.course import sandbox

    path, reason = sandbox.bwrap_status()
    if path is None:
        pytest.skip(f"no bubblewrap sandbox here: {reason}")
    kdlib_dir = str(Path(grading.__file__).resolve().parents[1])
    real_paths = sandbox._python_paths

    def without_kdlib(hidden):  # what an editable install of another checkout amounts to
        return [p for p in real_paths(hidden) if not p.startswith(kdlib_dir)]

    monkeypatch.setattr(sandbox, "_python_paths", without_kdlib)
    monkeypatch.setattr(sandbox, "kdlib_path_entry", lambda: "")
    subs, out = tmp_path / "subs", tmp_path / "out"
    put(subs, "ada", course, "solutions", A3)
    run = kdlib_grade(
        A3, "--submissions", subs, "--out", out, "--timeout", TIMEOUT, cwd=course, in_process=True
    )
    assert run.returncode == 3, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kdlib grade: canary: {A3}: "), run.stderr
    assert "kdlib" in lines[0] and "No module named" in lines[0], lines[0]
    assert kdlib_dir in lines[0]  # where the grader imports it from
    assert not (out / "gradebook.db").exists()  # the gradebook was never touched
    assert not (out / "grades.csv").exists()


def test_skip_canary_is_said(course, tmp_path):
    (tmp_path / "subs").mkdir()
    run = kdlib_grade(
        A1,
        "--submissions",
        tmp_path / "subs",
        "--out",
        tmp_path / "out",
        "--skip-canary",
        cwd=course,
        in_process=True,
    )
    assert "canary: SKIPPED (--skip-canary)" in run.stdout
    assert "the canary was skipped" in run.stderr


@pytest.mark.notebooks  # starts Jupyter kernels
def test_memory_and_file_limits_are_reported_and_scored_0(course, tmp_path):
    subs, out = tmp_path / "subs", tmp_path / "out"
    put(subs, "ada", course, "solutions", A1)
    put(
        subs,
        "hog",
        course,
        "solutions",
        A1,
        lambda nb: set_cell(
            nb, "add_answer", "def add(a, b):\n    return a + b\nhog = bytearray(3 << 30)"
        ),
    )
    put(
        subs,
        "filler",
        course,
        "solutions",
        A1,
        lambda nb: set_cell(
            nb,
            "add_answer",
            "def add(a, b):\n    return a + b\n"
            "with open('big.bin', 'wb') as fh:\n    fh.write(bytes(3 << 20))",
        ),
    )
    run = kdlib_grade(
        A1,
        "--submissions",
        subs,
        "--out",
        out,
        "--timeout",
        TIMEOUT,
        "--memory-limit",
        "1G",
        "--file-limit",
        "2M",
        "--jobs",
        2,
        "--no-feedback",
        cwd=course,
        in_process=True,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    rows = {r["student"]: r for r in read_csv(out / "grades.csv")}
    assert float(rows["ada"]["score"]) == 5  # the canary and the honest student: unaffected
    issues = read_csv(out / "issues.csv")
    for student in ("hog", "filler"):
        assert float(rows[student]["score"]) == 0, rows[student]
        found = [i for i in issues if i["student"] == student]
        assert [i["issue"] for i in found] == ["resource-limit"], found
        assert "--memory-limit 1G, --file-limit 2M" in found[0]["detail"]
    assert not [i for i in issues if i["student"] == "ada"]
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}", "kd-course") as gb:
        hog = gb.find_submission(A1, "hog")
        assert hog.needs_manual_grade and hog.score == 0


def test_limits_are_set_on_the_kernel_alone():
    """The prefix put before a kernel's command sets the two limits in that process and runs
    the command; the grader's own process keeps its limits (a forked grader may already hold
    more memory than a submission is allowed)."""
    import resource
    import subprocess
    import sys

    from kdlib.course.limits import limited_command

    show = (
        "import resource as r; print(r.getrlimit(r.RLIMIT_DATA)[0], r.getrlimit(r.RLIMIT_FSIZE)[0])"
    )
    before = (resource.getrlimit(resource.RLIMIT_DATA), resource.getrlimit(resource.RLIMIT_FSIZE))
    cmd = limited_command([sys.executable, "-c", show], 1 << 30, 2 << 20)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(1 << 30), str(2 << 20)]
    assert (
        resource.getrlimit(resource.RLIMIT_DATA),
        resource.getrlimit(resource.RLIMIT_FSIZE),
    ) == before
    assert limited_command(["python", "-m", "ipykernel"], None, 0) == ["python", "-m", "ipykernel"]
