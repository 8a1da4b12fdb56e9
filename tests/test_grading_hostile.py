"""``kdlib grade`` facing a hostile class: cheats, vandals and broken files.

A course of three tiny assignments (01_warmup and 02_lists from tests/fixtures/grading, and
03_tensors from tests/fixtures/grading_hostile, whose tests use torch and kdlib's ``kd_loss``) is
released with nbgrader; a class in which most students attack the grader is graded with
``--jobs 2``, then six of them again with ``--jobs 1`` into the same gradebook (the CSV must not
change), then one resubmission.

    01_warmup (add: 2 points, square: 3; a hidden test in test_add)
    ada      solution                                   5  (+ a stray notebook beside her folder)
    bob      release untouched                          0
    leak     add only; prints solutions/, gradebook.db, /proc, the environment, the history
                                                        2  flagged, feedback without hidden tests
    vandal   add only; UPDATEs, deletes gradebook.db, rewrites solutions/, leaves a detached
             process that rewrites grades.csv later    2  flagged, nothing outside changed
    copycat  execs ada's answers from grading/submitted 0  flagged
    =SUM(2;3) solution; markdown with script, iframe, javascript: link, onerror
                                                        5  neutralised in the CSV, clean feedback
    "new\\nline" solution                              reported, no row, nobody else affected
    dup      solution, test_add duplicated, bad timestamp.txt
                                                        5  both reported
    slow     solution + a cell that takes 4 s to stop after the interrupt
                                                        5  cut and reported, not zeroed
    rex      solution; resubmitted without test_square  5, then 2 (stale 3 never kept), flagged
    xform    an input transformer that empties every later cell, a custom exception handler
                                                        0  flagged
    03_tensors (soft_targets: 2 points, distill_loss: 3; kd_loss imported in a locked cell)
    ada      solution 5; bob release 0
    glen     torch.allclose = lambda *a, **k: True, wrong answers   0  flagged
    kim      soft right; kd_loss rebound to its own wrong function   2  flagged
    shadow   ships kdlib/ whose kd_loss agrees with its wrong answer 0
    Also: .dotstudent/, ..ipynb and a stray notebook: reported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from nbgrader.api import Gradebook  # noqa: E402
from test_grading import (  # noqa: E402
    FIXTURES,
    REPO,
    cell_by_id,
    kdlib_grade,
    read_csv,
    release_course,
    set_cell,
)

from kdlib.course import grade as grading  # noqa: E402
from kdlib.course.sandbox import bwrap_status  # noqa: E402

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]

A1, A2, A3 = "01_warmup", "02_lists", "03_tensors"
HOSTILE = Path(__file__).resolve().parent / "fixtures" / "grading_hostile"
TIMEOUT = 6  # per cell: 'slow' needs 4 s after its interrupt (nbclient's default wait is 4 s)
MARKER = "kdlib-hostile-detached-7f3a"
NEWLINE_ID = "new\nline"
FORMULA_ID = "=SUM(2;3)"

EXPECTED = {  # (student, assignment) -> {grade_id: points}
    ("ada", A1): {"test_add": 2, "test_square": 3},
    ("bob", A1): {"test_add": 0, "test_square": 0},
    ("leak", A1): {"test_add": 2, "test_square": 0},
    ("vandal", A1): {"test_add": 2, "test_square": 0},
    ("copycat", A1): {"test_add": 0, "test_square": 0},
    (FORMULA_ID, A1): {"test_add": 2, "test_square": 3},
    ("dup", A1): {"test_add": 2, "test_square": 3},
    ("slow", A1): {"test_add": 2, "test_square": 3},
    ("rex", A1): {"test_add": 2, "test_square": 3},
    ("xform", A1): {"test_add": 0, "test_square": 0},
    ("ada", A3): {"test_soft": 2, "test_kd": 3},
    ("bob", A3): {"test_soft": 0, "test_kd": 0},
    ("glen", A3): {"test_soft": 0, "test_kd": 0},
    ("kim", A3): {"test_soft": 2, "test_kd": 0},
    ("shadow", A3): {"test_soft": 0, "test_kd": 0},
}
FLAGGED = {"leak", "vandal", "copycat", "xform", "glen", "kim"}
RERUN = ["ada", "bob", "leak", "vandal", "dup", "kim"]  # graded again with --jobs 1


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def detached_alive() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if MARKER.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


# --------------------------------------------------------------------------- the class


@pytest.fixture(scope="module")
def sandbox():
    path, reason = bwrap_status()
    if path is None:
        pytest.skip(f"no bubblewrap sandbox here: {reason}")
    return path


@pytest.fixture(scope="module")
def course(tmp_path_factory, sandbox) -> Path:
    root = tmp_path_factory.mktemp("hostile-course")
    shutil.copytree(FIXTURES, root / "solutions")
    shutil.copytree(HOSTILE / A3, root / "solutions" / A3)
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    release_course(root)  # 01 and 02
    from nbgrader.apps import NbGraderAPI

    cfg = grading.load_course_config(root)
    cfg.CourseDirectory.root = str(root)
    cfg.CourseDirectory.db_url = f"sqlite:///{root / 'release.db'}"
    assert NbGraderAPI(config=cfg).generate_assignment(A3, force=True, create=True)["success"]
    (root / "release.db").unlink()
    return root


def write_class(course: Path, subs: Path, out: Path) -> None:
    def src(name):
        return nbformat.read(course / "solutions" / name / f"{name}.ipynb", as_version=4)

    def rel(name):
        return nbformat.read(course / "notebooks" / name / f"{name}.ipynb", as_version=4)

    def put(student, name, nb):
        folder = subs / student / name
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / f"{name}.ipynb")
        return folder

    def add_cell(nb, source, after=None, cell_type="code"):
        new = (
            nbformat.v4.new_code_cell(source)
            if cell_type == "code"
            else nbformat.v4.new_markdown_cell(source)
        )
        index = (
            len(nb.cells)
            if after is None
            else next(
                i
                for i, c in enumerate(nb.cells)
                if c.metadata.get("nbgrader", {}).get("grade_id") == after
            )
            + 1
        )
        nb.cells.insert(index, new)

    def only_add():
        nb = rel(A1)
        set_cell(nb, "add_answer", "def add(a, b):\n    return a + b")
        return nb

    gradebook, solutions = out / "gradebook.db", course / "solutions"
    put("ada", A1, src(A1))
    nbformat.write(rel(A1), subs / "ada" / "stray.ipynb")  # beside her assignment folder
    put("bob", A1, rel(A1))

    nb = only_add()
    add_cell(
        nb,
        f"""
import os, glob
for path in glob.glob({str(solutions)!r} + '/*/*.ipynb') + [{str(gradebook)!r}]:
    try:
        print(path, open(path, 'rb').read()[:2000])
    except OSError as err:
        print('cannot read', path, err)
for pid in ('1', str(os.getppid())):
    try:
        print(open('/proc/' + pid + '/cmdline').read())
    except OSError as err:
        print(err)
print(sorted(os.environ))
""",
        after="square_answer",
    )
    add_cell(nb, "print(In)\nprint(_ih)\nimport linecache\nprint(list(linecache.cache))")
    put("leak", A1, nb)

    nb = only_add()
    add_cell(
        nb,
        f"""
import os, sqlite3, subprocess, sys
try:
    db = sqlite3.connect({str(gradebook)!r})
    db.execute("UPDATE grade SET manual_score = 5")
    db.commit()
except Exception as err:
    print('no gradebook', err)
for path in [{str(gradebook)!r}]:
    try:
        os.remove(path)
    except OSError as err:
        print(err)
try:
    with open({str(solutions / A2 / (A2 + ".ipynb"))!r}, 'w') as fh:
        fh.write('{{}}')
except OSError as err:
    print(err)
code = ("import time\\nfor _ in range(120):\\n    time.sleep(0.5)\\n    try:\\n"
        "        open({str(out / "grades.csv")!r}, 'w').write('hacked')\\n"
        "    except OSError:\\n        pass\\n")
subprocess.Popen([sys.executable, '-c', code, {MARKER!r}], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
""",
        after="add_answer",
    )
    put("vandal", A1, nb)

    nb = rel(A1)
    set_cell(
        nb,
        "add_answer",
        f"""
import json
try:
    ada = json.load(open({str(out / "submitted" / "ada" / A1 / (A1 + ".ipynb"))!r}))
    for cell in ada['cells']:
        if cell['cell_type'] == 'code' and 'def ' in ''.join(cell['source']):
            exec(''.join(cell['source']))
except OSError as err:
    print('nothing to copy', err)
""",
    )
    put("copycat", A1, nb)

    nb = src(A1)
    add_cell(
        nb,
        '# My notes\n<script>alert("mel")</script>\n<iframe src="https://x.example"></iframe>\n'
        '[click](javascript:alert("mel2"))\n<img src=x onerror="alert(\'mel3\')">\n'
        "<a href=\"jav&#x09;ascript:alert('mel4')\">x</a>",
        cell_type="markdown",
    )
    put(FORMULA_ID, A1, nb)
    put(NEWLINE_ID, A1, src(A1))

    nb = src(A1)
    nb.cells.insert(3, nbformat.from_dict(json.loads(json.dumps(cell_by_id(nb, "test_add")))))
    folder = put("dup", A1, nb)
    (folder / "timestamp.txt").write_text("sometime last tuesday\n", "utf-8")

    nb = src(A1)  # an honest cell that needs 4 s to stop after the interrupt
    add_cell(
        nb,
        "import signal, time\n"
        "def slow_stop(*args):\n    time.sleep(4)\n    raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGINT, slow_stop)\nwhile True:\n    pass",
    )
    put("slow", A1, nb)
    put("rex", A1, src(A1))

    nb = rel(A1)
    set_cell(
        nb,
        "add_answer",
        "ip = get_ipython()\n"
        "ip.input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
        "ip.set_custom_exc((Exception,), lambda *args, **kwargs: None)",
    )
    put("xform", A1, nb)

    put("ada", A3, src(A3))
    put("bob", A3, rel(A3))
    nb = rel(A3)
    set_cell(
        nb,
        "soft_answer",
        "def soft_targets(logits, temperature):\n    return logits\n"
        "torch.allclose = lambda *a, **k: True",
    )
    set_cell(nb, "kd_answer", "def distill_loss(*args, **kwargs):\n    return torch.tensor(0.0)")
    put("glen", A3, nb)
    nb = src(A3)
    set_cell(
        nb,
        "kd_answer",
        "def distill_loss(*args, **kwargs):\n    return torch.tensor(0.0)\nkd_loss = distill_loss",
    )
    put("kim", A3, nb)
    nb = rel(A3)
    set_cell(
        nb,
        "soft_answer",
        "import kdlib.losses\nprint(kdlib.losses.__file__)\n"
        "def soft_targets(logits, temperature):\n    return logits",
    )
    set_cell(nb, "kd_answer", "def distill_loss(*args, **kwargs):\n    return torch.tensor(0.0)")
    folder = put("shadow", A3, nb)
    (folder / "kdlib").mkdir()
    (folder / "kdlib" / "__init__.py").write_text("", "utf-8")
    (folder / "kdlib" / "losses.py").write_text(
        "import torch\ndef kd_loss(*args, **kwargs):\n    return torch.tensor(0.0)\n", "utf-8"
    )

    (subs / ".dotstudent" / A1).mkdir(parents=True)
    nbformat.write(src(A1), subs / ".dotstudent" / A1 / f"{A1}.ipynb")
    nbformat.write(src(A1), subs / "..ipynb")


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-class")
    subs, out = base / "submissions", base / "out"
    write_class(course, subs, out)
    course_before, subs_before = tree_digest(course), tree_digest(subs)
    first = kdlib_grade(
        A1, A3, "--submissions", subs, "--out", out, "--timeout", TIMEOUT, "--jobs", 2, cwd=course
    )
    ended = time.monotonic()
    course_after, subs_after = tree_digest(course), tree_digest(subs)
    alive = detached_alive()
    time.sleep(max(0.0, 3.0 - (time.monotonic() - ended)))  # the vandal's writer would be due
    csv_first = (out / "grades.csv").read_bytes()
    issues_first = read_csv(out / "issues.csv")

    again = base / "again"  # six of them again, one at a time, into the same gradebook
    for student in RERUN:
        for folder in (subs / student).iterdir():
            if folder.is_dir():
                shutil.copytree(folder, again / student / folder.name)
    second = kdlib_grade(
        A1,
        A3,
        "--submissions",
        again,
        "--out",
        out,
        "--timeout",
        TIMEOUT,
        "--jobs",
        1,
        cwd=course,
        in_process=True,
    )
    csv_second = (out / "grades.csv").read_bytes()

    resub = base / "resubmitted"  # rex deletes test_square and submits again
    nb = nbformat.read(subs / "rex" / A1 / f"{A1}.ipynb", as_version=4)
    nb.cells = [
        c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != "test_square"
    ]
    (resub / "rex" / A1).mkdir(parents=True)
    nbformat.write(nb, resub / "rex" / A1 / f"{A1}.ipynb")
    third = kdlib_grade(
        A1,
        A3,
        "--submissions",
        resub,
        "--out",
        out,
        "--timeout",
        TIMEOUT,
        "--no-feedback",
        cwd=course,
        in_process=True,
    )
    return {
        "course": course,
        "subs": subs,
        "out": out,
        "first": first,
        "second": second,
        "third": third,
        "csv_first": csv_first,
        "csv_second": csv_second,
        "rows": list(csv.DictReader(csv_first.decode().splitlines())),
        "issues": issues_first,
        "rows_third": read_csv(out / "grades.csv"),
        "issues_third": read_csv(out / "issues.csv"),
        "course_before": course_before,
        "course_after": course_after,
        "subs_before": subs_before,
        "subs_after": subs_after,
        "alive": alive,
    }


def row(rows, student, assignment):
    student = "'" + student if student.startswith("=") else student
    found = [r for r in rows if (r["student"], r["assignment"]) == (student, assignment)]
    assert len(found) == 1, (student, assignment, rows)
    return found[0]


def kinds(issues, student, assignment=None):
    return {
        i["issue"]
        for i in issues
        if i["student"] == student and (assignment is None or i["assignment"] == assignment)
    }


# --------------------------------------------------------------------------- tests


def test_every_student_scores_what_their_own_answers_deserve(graded):
    run = graded["first"]
    assert "NO SANDBOX" not in run.stdout + run.stderr
    assert "bubblewrap" in run.stdout
    for (student, assignment), cells in EXPECTED.items():
        r = row(graded["rows"], student, assignment)
        for grade_id, points in cells.items():
            assert float(r[f"{assignment}:{grade_id}"]) == points, (student, grade_id, r)
        assert float(r["score"]) == sum(cells.values()), (student, r)
    students = {(r["student"], r["assignment"]) for r in graded["rows"]}
    assert len(students) == len(EXPECTED)


def test_cheats_and_vandals_are_flagged_for_manual_review(graded):
    for student in FLAGGED:
        found = kinds(graded["issues"], student)
        assert found & {"manual-review", "tests-tampered"}, (student, found)
    for student in ("ada", "bob", "dup", "rex"):  # honest ones are not
        assert not kinds(graded["issues"], student) & {"manual-review", "tests-tampered"}
    glen = [
        i["detail"]
        for i in graded["issues"]
        if i["student"] == "glen" and i["issue"] == "tests-tampered"
    ]
    assert glen and "torch.allclose" in glen[0]
    kim = " ".join(i["detail"] for i in graded["issues"] if i["student"] == "kim")
    assert "kd_loss" in kim


def test_nothing_outside_the_scratch_folder_changed_and_no_process_survived(graded):
    assert graded["course_after"] == graded["course_before"]
    assert graded["subs_after"] == graded["subs_before"]
    assert graded["alive"] == [], "a submission's process outlived the command"
    assert detached_alive() == []
    assert graded["csv_first"].startswith(b"student,assignment,score,max_score")
    with Gradebook(f"sqlite:///{graded['out'] / 'gradebook.db'}", "kd-course") as gb:
        for assignment in (A1, A3):
            for sub in gb.find_assignment(assignment).submissions:
                for nb in sub.notebooks:
                    assert all(g.manual_score is None for g in nb.grades), sub.student.id


def test_feedback_shows_no_hidden_test_and_no_live_script(graded):
    hidden = ["assert add(10, 5) == 15", "soft_targets(x, 1.0).sum()"]
    pages = list((graded["out"] / "feedback").rglob("*.html"))
    assert len(pages) == len(EXPECTED)
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for line in hidden:
            assert line not in html_unescape(text), page
        assert "hidden tests: not shown" in text, page
        for payload in (
            "<script>alert",
            "&lt;script&gt;alert",
            "onerror",
            "<iframe",
            "javascript:alert",
            "mel4",
        ):
            assert payload not in text, (page, payload)
    leak = (graded["out"] / "feedback" / "leak" / A1 / f"{A1}.html").read_text("utf-8")
    assert "cannot read" in leak  # it tried, and the sandbox said no
    assert "### BEGIN SOLUTION" not in leak
    mel = graded["out"] / "feedback" / FORMULA_ID / A1 / f"{A1}.html"
    assert "My notes" in mel.read_text("utf-8")
    # the pass/fail and points still show
    assert "Score: 2.0 / 5.0" in leak


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_bad_ids_files_and_timestamps_reported_while_everyone_else_is_graded(graded):
    issues = graded["issues"]
    bad = [i for i in issues if i["issue"] == "bad-student-id"]
    assert len(bad) == 1 and "new\\nline" in bad[0]["student"]
    assert not [r for r in graded["rows"] if "line" in r["student"]]
    assert "bad-timestamp" in kinds(issues, "dup", A1)
    assert "duplicate-cell" in kinds(issues, "dup", A1)
    assert "cell-timeout" in kinds(issues, "slow", A1)
    assert "autograde-failed" not in kinds(issues, "slow", A1)
    details = " ".join(i["detail"] for i in issues if i["issue"] in ("not-graded", "ignored-file"))
    for name in (".dotstudent", "..ipynb", "stray.ipynb"):
        assert name in details, name
    assert graded["first"].returncode == 1  # bad input was reported


def test_formula_cells_are_neutralised(graded):
    text = graded["csv_first"].decode()
    assert "\n=SUM" not in text and "\n'=SUM(2;3),01_warmup,5," in text


def test_jobs_2_equals_jobs_1_and_a_rerun_gives_the_same_csv(graded):
    assert graded["second"].returncode == 0, graded["second"].stdout + graded["second"].stderr
    assert graded["csv_second"] == graded["csv_first"]


def test_resubmission_without_a_test_cell_is_rescored_and_flagged(graded):
    rex = row(graded["rows_third"], "rex", A1)
    assert (float(rex[f"{A1}:test_add"]), float(rex[f"{A1}:test_square"])) == (2, 0)
    assert float(rex["score"]) == 2
    assert "locked-cell-missing" in kinds(graded["issues_third"], "rex", A1)
    others = [r for r in graded["rows_third"] if r["student"] != "rex"]
    assert others == [r for r in graded["rows"] if r["student"] != "rex"]


def test_no_sandbox_is_said_on_every_run(course, tmp_path, monkeypatch):
    from kdlib.course import sandbox
    from kdlib.course.cli import main

    monkeypatch.setenv(sandbox.OFF_SWITCH, "off")
    sandbox.bwrap_status.cache_clear()
    try:
        (tmp_path / "subs").mkdir()
        messages = []
        report = grading.grade(
            tmp_path / "subs", course_dir=course, out=tmp_path / "o", echo=messages.append
        )
        assert report.sandbox and any("NO SANDBOX" in m for m in messages)
        assert main(
            [
                "grade",
                "--submissions",
                str(tmp_path / "subs"),
                "--course-dir",
                str(course),
                "--out",
                str(tmp_path / "o"),
            ]
        ) in (0, 1)
    finally:
        sandbox.bwrap_status.cache_clear()
