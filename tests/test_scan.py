"""The scan of student cells flags what a submission did, never what the course's code does."""

from __future__ import annotations

from pathlib import Path

import nbformat

from kdlib.course.sandbox import scan_cells

ROOT = Path(__file__).resolve().parent.parent
CAPSTONE = ROOT / "notebooks" / "13_capstone" / "13_capstone.ipynb"
DESIGN = ROOT / "notebooks" / "12_debug_and_design" / "12_debug_and_design.ipynb"


def _released_sources(nb) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def test_the_untouched_capstone_is_not_flagged():
    nb = nbformat.read(str(CAPSTONE), as_version=4)
    assert scan_cells(nb, _released_sources(nb)) == []


def test_a_student_cell_that_draws_the_hidden_test_split_is_flagged():
    nb = nbformat.read(str(CAPSTONE), as_version=4)
    released = _released_sources(nb)
    nb.cells.append(
        nbformat.v4.new_code_cell("from kdlib.tasks import spiral_test\npeek = spiral_test(seed)\n")
    )
    reasons = scan_cells(nb, released)
    assert len(reasons) == 1 and "hidden test split" in reasons[0]


def _design_answer(nb):
    return next(
        c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "design_answer"
    )


def _answer_design(nb, body: str) -> None:
    cell = _design_answer(nb)
    start, end = "### BEGIN SOLUTION", "### END SOLUTION"
    if start in cell.source:  # the solution notebook
        head, rest = cell.source.split(start, 1)
        cell.source = head + body + rest.split(end, 1)[1]
    else:  # the release: the answer replaces `raise NotImplementedError()`
        cell.source = cell.source.replace("raise NotImplementedError()", body)


def test_an_experiment_design_chosen_on_validation_data_is_not_flagged():
    nb = nbformat.read(str(DESIGN), as_version=4)
    released = _released_sources(nb)
    assert scan_cells(nb, released) == []
    _answer_design(
        nb,
        "for a in (0.2, 0.5, 0.8):\n    search.run(temperature=4.0, alpha=a)\n"
        "chosen = search.best()\n",
    )
    assert scan_cells(nb, released) == []


def test_an_experiment_design_that_looks_at_the_test_split_is_flagged():
    nb = nbformat.read(str(DESIGN), as_version=4)
    released = _released_sources(nb)
    _answer_design(
        nb,
        "test = load_dataset(dataset, seed=seed).test\n"
        "scores = {a: evaluate(train_student(4.0, a), test)['accuracy'] for a in (0.2, 0.8)}\n"
        "best = max(scores, key=scores.get)\n"
        "search.run(temperature=4.0, alpha=best)\nchosen = search.best()\n",
    )
    reasons = scan_cells(nb, released)
    assert len(reasons) == 1 and reasons[0].startswith("design_answer")
    assert "test split" in reasons[0]


def test_the_test_split_in_another_answer_is_fair_use():
    """Only the design answer is held to validation data: the same code in a new cell of the
    student's own (a look at a finished model) is not flagged."""
    nb = nbformat.read(str(DESIGN), as_version=4)
    released = _released_sources(nb)
    nb.cells.append(nbformat.v4.new_code_cell("test = load_dataset(dataset, seed=seed).test\n"))
    assert scan_cells(nb, released) == []
