"""A budget of training runs, for choosing hyperparameters on the validation split.

Choosing a setting (a temperature, a weight) is an experiment with a cost: every setting tried is
a training run, and every look at the held-out test split spends its independence. A
:class:`RunBudget` makes both explicit::

    budget = RunBudget(train, splits.val, runs=6)   # train(**setting) -> a trained model
    budget.run(temperature=4.0, alpha=0.5)          # trains, returns the validation accuracy
    budget.best()                                   # the setting with the best validation score

It trains with the function it was given, measures on the validation split it was given (it
never holds the test split), keeps a log of every run, and refuses a run past its budget
(:class:`BudgetExceeded`). Notebook 12's experiment-design exercise grades a choice made with it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kdlib.metrics import evaluate

__all__ = ["BudgetExceeded", "RunBudget"]


class BudgetExceeded(RuntimeError):
    """A run was asked for after the budget was spent."""


class RunBudget:
    """At most ``runs`` trainings, each scored on ``val``.

    Args:
        train: ``train(**setting) -> nn.Module``, a trained model for one setting (keyword
            arguments, e.g. ``temperature=4.0, alpha=0.5``).
        val: the validation data (a ``kdlib.data.Split``, a loader or an ``(x, y)`` pair).
        runs: how many trainings the budget allows (>= 1).
        device: where the models are evaluated (default: where their parameters are).

    ``log`` lists the runs in order, each ``{**setting, "val_accuracy": a}``.
    """

    def __init__(self, train: Callable[..., nn.Module], val, runs: int = 6, device=None):
        if not callable(train):
            raise ValueError(f"train must be a function setting -> trained model, got {train!r}")
        if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
            raise ValueError(f"runs must be an integer >= 1, got {runs!r}")
        self.train, self.val, self.runs, self.device = train, val, runs, device
        self.log: list[dict] = []

    def __repr__(self) -> str:
        return f"RunBudget({len(self.log)} of {self.runs} runs used)"

    @property
    def left(self) -> int:
        """Runs still allowed."""
        return self.runs - len(self.log)

    def run(self, **setting) -> float:
        """Train one model with ``train(**setting)``; return its validation accuracy (0-1).

        Raises :class:`BudgetExceeded` once ``runs`` trainings have been made (nothing is
        trained then), ``ValueError`` for a setting without keyword arguments.
        """
        if not setting:
            raise ValueError("run() needs the setting as keyword arguments, e.g. alpha=0.5")
        if self.left <= 0:
            raise BudgetExceeded(
                f"the budget of {self.runs} runs is spent; choose among the runs made: {self.log}"
            )
        model = self.train(**setting)
        if not isinstance(model, nn.Module):
            raise ValueError(f"train(**{setting}) returned {type(model).__name__}, not a model")
        accuracy = evaluate(model, self.val, self.device)["accuracy"]
        self.log.append({**setting, "val_accuracy": accuracy})
        return accuracy

    def best(self) -> dict:
        """The setting (without its score) of the run with the highest validation accuracy;
        the first such run on a tie. Raises ``ValueError`` before any run."""
        if not self.log:
            raise ValueError("no run yet: call run(...) first")
        top = max(self.log, key=lambda r: r["val_accuracy"])
        return {k: v for k, v in top.items() if k != "val_accuracy"}
