"""The course notebooks: solutions run and pass their tests, releases are real exercises,
notebooks/ is exactly what nbgrader generates from solutions/, and nothing leaks.

The solutions are executed once, in fast mode, by ``kdlib course run`` (papermill, kernel
``python3``): the same command a learner and CI use; the session fixture ``course`` lives in
conftest.py, so that test_claims.py reads the same run. nbval (``--nbval-lax``) executes them
again as part of the same pytest run and compares the cells marked ``# NBVAL_CHECK_OUTPUT``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from kdlib.course.release import CHECK_MARK, check

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))
NAMES = [p.stem for p in SOLUTIONS]
STANDARD_PARAMETERS = {"device", "dataset", "seed", "fast", "epochs", "n_seeds", "results_dir"}

pytestmark = pytest.mark.notebooks


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def test_the_course_has_its_thirteen_notebooks():
    assert [n[:2] for n in NAMES] == [f"{i:02d}" for i in range(1, 14)], NAMES
    released = sorted(p.stem for p in (ROOT / "notebooks").glob("*/*.ipynb"))
    assert released == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_solution_runs_top_to_bottom_and_its_tests_pass(course, name):
    out, results = course
    result = results[name]
    assert result.status == "ok", result.error
    executed = _read(out / result.output)
    graded = [c for c in executed.cells if _nbgrader(c).get("grade")]
    assert graded, "a course notebook has autograded tests"
    for cell in executed.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None, "every cell ran"
            assert not [o for o in cell.outputs if o.output_type == "error"]
    # the headline figures it wrote are the ones the executed notebook computed
    figures = json.loads((out / "results" / f"{name}.json").read_text())["figures"]
    assert figures and figures == result.figures


@pytest.mark.parametrize("path", SOLUTIONS, ids=NAMES)
def test_parameters_cell(path):
    nb = _read(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    names = set(re.findall(r"^(\w+)\s*=", tagged[0].source, flags=re.M))
    assert STANDARD_PARAMETERS <= names, STANDARD_PARAMETERS - names
    assert nb.metadata.kernelspec.name == "python3"
    call = re.compile(r"save_results\(\s*[\"']" + re.escape(path.stem) + r"[\"']")
    assert any(call.search(c.source) for c in nb.cells[-3:] if c.cell_type == "code")


@pytest.mark.parametrize("path", SOLUTIONS, ids=NAMES)
def test_committed_without_outputs_but_the_checked_ones(path):
    for cell in _read(path).cells:
        if cell.cell_type != "code":
            continue
        if cell.source.lstrip().startswith(CHECK_MARK):
            assert cell.execution_count == 1, "nbval compares only cells with a count"
        else:
            assert cell.execution_count is None
            assert cell.outputs == [], f"stored output in:\n{cell.source[:200]}"
    release = ROOT / "notebooks" / path.parent.name / path.name
    for cell in _read(release).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebooks_are_what_nbgrader_generates_now():
    """`kdlib release --check`: solutions/ clean and notebooks/ regenerated to the byte."""
    assert check(ROOT) == [], "run `kdlib release` and commit notebooks/"


def _solution_lines(nb) -> tuple[list[str], list[str]]:
    """Non-trivial lines inside solution regions and inside hidden-test regions."""
    solution, hidden = [], []
    for cell in nb.cells:
        target = None
        for line in cell.source.splitlines():
            mark = line.strip()
            if mark == "### BEGIN SOLUTION":
                target = solution
            elif mark == "### BEGIN HIDDEN TESTS":
                target = hidden
            elif mark in ("### END SOLUTION", "### END HIDDEN TESTS"):
                target = None
            elif target is not None and len(mark) > 12 and not mark.startswith("#"):
                target.append(mark)
    return solution, hidden


@pytest.mark.parametrize("path", SOLUTIONS, ids=NAMES)
def test_release_leaks_no_solution_and_no_hidden_test(path):
    source = _read(path)
    release = _read(ROOT / "notebooks" / path.parent.name / path.name)
    solution, hidden = _solution_lines(source)
    assert solution, "the notebook has exercises"
    assert hidden, "the notebook has hidden tests"
    release_lines = {line.strip() for cell in release.cells for line in cell.source.splitlines()}
    text = "\n".join(cell.source for cell in release.cells)
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS"):
        assert marker not in text
    # a line may legitimately appear elsewhere in the notebook (e.g. a common call);
    # only lines unique to the solution regions must be gone
    elsewhere = set()
    for cell in source.cells:
        inside = False
        for line in cell.source.splitlines():
            if line.strip().startswith("### BEGIN"):
                inside = True
            elif line.strip().startswith("### END"):
                inside = False
            elif not inside:
                elsewhere.add(line.strip())
    leaked = [line for line in solution + hidden if line in release_lines and line not in elsewhere]
    assert not leaked, f"solution or hidden-test text in the release: {leaked[:5]}"
    stubs = text.count("raise NotImplementedError()")
    answer_cells = [  # code answers get a stub; a written (markdown) answer does not
        c for c in source.cells if _nbgrader(c).get("solution") and c.cell_type == "code"
    ]
    assert stubs >= len(answer_cells) > 0


@pytest.mark.parametrize("path", SOLUTIONS, ids=NAMES)
def test_student_release_stops_at_its_first_exercise(path, tmp_path, monkeypatch):
    import papermill
    from papermill.exceptions import PapermillExecutionError

    monkeypatch.setenv("KDLIB_FAST", "1")
    release = ROOT / "notebooks" / path.parent.name / path.name
    nb = _read(release)
    stubs = [i for i, c in enumerate(nb.cells) if "raise NotImplementedError()" in c.source]
    with pytest.raises(PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(release),
            str(tmp_path / path.name),
            kernel_name="python3",
            cwd=str(tmp_path),
            progress_bar=False,
            execution_timeout=300,
        )
    assert info.value.ename == "NotImplementedError"
    executed = _read(tmp_path / path.name)
    failed = [
        c.source
        for c in executed.cells
        if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)
    ]
    # papermill inserts an injected-parameters cell, so locate the failure by its source:
    # it is the first exercise or the code right after it, before the second exercise
    where = [i for i, c in enumerate(nb.cells) if c.source == failed[0]]
    end = stubs[1] if len(stubs) > 1 else len(nb.cells)
    assert where and stubs[0] <= where[0] < end
