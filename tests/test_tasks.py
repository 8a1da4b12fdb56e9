"""kdlib.tasks (the generated spiral task of the capstone) and kdlib.tuning (RunBudget)."""

from __future__ import annotations

import math

import pytest
import torch

from kdlib.data import IGNORE_INDEX, Split
from kdlib.models import MLP
from kdlib.tasks import SIZES, spiral_task, spiral_test, spirals
from kdlib.tuning import BudgetExceeded, RunBudget


def test_spirals_follow_the_formula():
    """Undo the rotation: the plane holds the arms (radius and angle as documented), the other
    coordinates are the noise."""
    data = spirals(4000, seed=3, part=1, noise=0.0)
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3)))[0]
    z = data.x @ rotation.T  # x = z Q, Q orthogonal
    plane, rest = z[:, :2], z[:, 2:]
    r = plane.norm(dim=1) / 3
    assert r.max() <= 1 + 1e-5
    angle = torch.atan2(plane[:, 1], plane[:, 0])
    expected = 2 * math.pi * (r + data.y / 3)
    gap = torch.remainder(angle - expected + math.pi, 2 * math.pi) - math.pi
    assert gap.abs().max() < 1e-3
    assert abs(rest.std().item() - 1) < 0.05 and abs(rest.mean().item()) < 0.05


def test_parts_share_the_rotation_and_are_independent_draws():
    a, b = spirals(500, seed=1, part=1), spirals(500, seed=1, part=2)
    assert not torch.equal(a.x, b.x)
    again = spirals(500, seed=1, part=1)
    assert torch.equal(a.x, again.x) and torch.equal(a.y, again.y)
    assert not torch.equal(spirals(500, seed=2, part=1).x, a.x)
    # the same rotation: both parts' second moments agree (plane variance ~4.5 against 1)
    ca, cb = a.x.T @ a.x / 500, b.x.T @ b.x / 500
    assert (ca - cb).abs().max() < 0.6
    assert a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert set(a.y.tolist()) == {0, 1, 2}


def test_spiral_task_hides_the_test_split_and_most_labels():
    task = spiral_task(0)
    assert len(task.transfer) == SIZES["transfer"] and len(task.val) == SIZES["val"]
    assert int((task.transfer.y != IGNORE_INDEX).sum()) == 200
    assert not hasattr(task, "test")
    test = spiral_test(0)
    assert len(test) == SIZES["test"]
    assert not any(torch.equal(test.x[:5], s.x[:5]) for s in (task.transfer, task.val))
    assert task.in_features == 4 and task.num_classes == 3 and "200 labelled" in repr(task)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n": 0}, "n"),
        ({"n": 10, "arms": 1}, "arms"),
        ({"n": 10, "features": 1}, "features"),
        ({"n": 10, "noise": -0.1}, "noise"),
        ({"n": 10, "turns": float("nan")}, "turns"),
    ],
)
def test_spirals_name_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        spirals(**kwargs)


def _constant_model(klass):
    model = MLP(2, (), 2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1.0, 0.0]) if klass == 0 else torch.tensor([0.0, 1.0]))
    return model


def test_run_budget_trains_scores_on_validation_and_counts():
    val = Split(torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]))
    calls = []

    def train(klass, other=None):
        calls.append((klass, other))
        return _constant_model(klass)

    budget = RunBudget(train, val, runs=2)
    assert budget.run(klass=1) == pytest.approx(0.25)
    assert budget.run(klass=0, other="x") == pytest.approx(0.75)
    assert budget.left == 0 and calls == [(1, None), (0, "x")]
    with pytest.raises(BudgetExceeded, match="2 runs"):
        budget.run(klass=1)
    assert len(calls) == 2, "nothing is trained past the budget"
    assert budget.log == [
        {"klass": 1, "val_accuracy": pytest.approx(0.25)},
        {"klass": 0, "other": "x", "val_accuracy": pytest.approx(0.75)},
    ]
    assert budget.best() == {"klass": 0, "other": "x"}
    assert "2 of 2" in repr(budget)


def test_run_budget_checks_its_input():
    val = Split(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="runs"):
        RunBudget(lambda: None, val, runs=0)
    with pytest.raises(ValueError, match="train"):
        RunBudget("not a function", val)
    budget = RunBudget(lambda **s: "not a model", val)
    with pytest.raises(ValueError, match="keyword"):
        budget.run()
    with pytest.raises(ValueError, match="not a model"):
        budget.run(a=1)
    with pytest.raises(ValueError, match="no run yet"):
        budget.best()
