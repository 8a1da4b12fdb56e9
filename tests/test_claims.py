"""Every directional claim the notebooks' text makes holds in the fast-mode run a student makes.

The notebooks are executed once per session, in fast mode, by the ``course`` fixture
(tests/conftest.py); each writes its headline figures with ``save_results``. One function per
notebook asserts exactly the directional statements its text states as results (sentences
that hold only in full mode are written conditionally in the notebook, beside the stored
full-mode figures, and are not asserted here). When a claim fails, either the run changed
or the text must change: never loosen the assertion without changing the sentence.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebooks


def figures(course, name: str) -> dict:
    """The headline figures the executed notebook ``name`` saved (skips if it failed)."""
    _, results = course
    result = results[name]
    assert result.status == "ok", result.error
    return result.figures


def test_claims_01(course):
    f = figures(course, "01_intuition")
    # "The student costs a fraction of the teacher": fewer parameters
    assert f["student_parameters"] < f["teacher_parameters"]
    # "What the student loses is accuracy": trained on the labels alone it is below the teacher
    assert f["student_test_accuracy"] < f["teacher_test_accuracy"]
    # "Raising tau moves mass onto the other classes and the entropy climbs towards log C"
    assert f["teacher_entropy_tau1"] < f["teacher_entropy_tau4"] < 2.3026
    # "far more probability on a class's look-alike than on the classes of the other groups",
    # "the whole pattern follows the true similarity"
    assert f["similar_within_over_across"] > 10
    assert f["similar_log_correlation"] > 0.5
