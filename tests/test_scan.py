"""The scan of student cells flags what a submission did, never what the course's code does."""

from __future__ import annotations

from pathlib import Path

import nbformat

from kdlib.course.sandbox import scan_cells

ROOT = Path(__file__).resolve().parent.parent
CAPSTONE = ROOT / "notebooks" / "13_capstone" / "13_capstone.ipynb"


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
