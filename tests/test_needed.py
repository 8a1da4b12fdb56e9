"""Which cells autograding runs (kdlib/course/needed.py): the answers, the tests and what they
depend on; never the course's experiments after the last exercise; always what a student
added or changed."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from kdlib.course.needed import cells_to_skip

REPO = Path(__file__).resolve().parents[1]


def cell(source, **nbgrader):
    c = nbformat.v4.new_code_cell(source)
    if nbgrader:
        c.metadata["nbgrader"] = nbgrader
    return c


def notebook():
    return [
        cell("import torch\nfrom kdlib import models"),  # 0 imports
        cell("seed = 0\nfast = True"),  # 1 parameters
        cell("teacher = models.MLP(4, 2)"),  # 2 defines what a test reads
        cell("train(teacher, seed=seed)"),  # 3 changes it in place
        cell("sweep = [run(s) for s in range(9)]"),  # 4 an experiment no test reads
        cell(
            "def answer(x):\n    raise NotImplementedError()",
            solution=True,
            grade=False,
            grade_id="answer",
        ),  # 5
        cell(
            "assert answer(teacher) == 1", grade=True, locked=True, grade_id="test", points=1
        ),  # 6
        cell("plot(sweep)"),  # 7 after the last test
        cell("save_results('x', {'a': 1}, results_dir)"),  # 8
    ]


def released(cells):
    return {c.source for c in cells}


def test_experiments_no_test_reads_are_skipped_and_what_tests_need_runs():
    cells = notebook()
    assert cells_to_skip(cells, released(cells)) == {4, 7, 8}


def test_a_cell_the_student_changed_or_added_always_runs():
    cells = notebook()
    release = released(cells)
    cells[7].source = "plot(sweep)  # mine"
    cells.insert(8, cell("print('my own cell')"))
    skip = cells_to_skip(cells, release)
    assert 7 not in skip and 8 not in skip
    assert 4 not in skip  # the changed cell reads sweep: its experiment runs too


def test_an_answer_reading_a_course_variable_pulls_its_cell_in():
    cells = notebook()
    release = released(cells)
    cells[5].source = "def answer(x):\n    return len(sweep)"
    assert 4 not in cells_to_skip(cells, release)


def test_cells_that_cannot_be_read_run_when_a_later_cell_runs():
    cells = notebook()
    cells.insert(4, cell("exec(open('setup.py').read())"))
    cells.append(cell("exec('x = 1')"))
    skip = cells_to_skip(cells, released(cells))
    assert 4 not in skip  # before the test: might define anything it reads
    assert len(cells) - 1 in skip  # after the last test: nothing can depend on it


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir())
)
def test_course_notebooks_keep_every_graded_and_answer_cell(name):
    sol = nbformat.read(REPO / "solutions" / name / f"{name}.ipynb", as_version=4)
    rel = nbformat.read(REPO / "notebooks" / name / f"{name}.ipynb", as_version=4)
    sources = {c.source.strip() for c in rel.cells if c.cell_type == "code"}
    for nb in (sol, rel):
        skip = cells_to_skip(nb.cells, sources)
        for index in skip:
            meta = nb.cells[index].metadata.get("nbgrader", {})
            assert not meta.get("grade") and not meta.get("solution"), (name, index)
        first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        assert first_code not in skip  # the imports
