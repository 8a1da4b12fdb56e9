"""Headline figures and claims that a notebook leaves behind for ``kdlib course run``.

Every course notebook ends by calling :func:`save_results` with a flat dict of the numbers it
measured and its :class:`Claims`. ``results_dir`` is a papermill parameter of each notebook;
when it is ``None`` (a student running the notebook by hand) nothing is written.

A *claim* is a sentence of the notebook that states a measured result, recorded as data right
under the experiment that measures it::

    claims = Claims("03_training_loop")
    claims.record("few_labels_kd_gain", "with 100 labels, KD beats training on them alone",
                  paired_difference(kd, alone, ("KD", "labels only")), expected="greater")

prints ``claim few_labels_kd_gain holds: KD beats labels only by 4.6 points [+3.9, +5.3],
8 seeds`` and keeps ``{id, text, estimate, ci95, n_seeds, expected, holds, verdict}``;
``save_results(..., claims=claims)`` writes the list into the notebook's results file, the
course report shows them in its scoreboard, and ``tests/test_claims.py`` fails on any claim
that does not hold. Identities, counts and structural facts are not claims (assert them).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

__all__ = [
    "Claims",
    "save_results",
    "load_results",
    "load_claims",
    "load_full_mode",
]

EXPECTED = ("greater", "less", "no-difference")


class Claims:
    """The claims of one notebook, in the order it records them (see the module docstring)."""

    def __init__(self, notebook: str):
        self.notebook = notebook
        self.items: list[dict] = []

    def record(self, id: str, text: str, comparison, expected, show: bool = True) -> dict:
        """Record that ``comparison`` (a :class:`kdlib.stats.Comparison`: a paired difference
        or one quantity's interval) supports ``expected``: ``"greater"``, ``"less"``,
        ``"no-difference"``, ``{"above": x}``, ``{"below": x}`` or ``{"within": x}`` (in the
        comparison's unit).
        Prints the claim and whether it holds; returns its record."""
        if not isinstance(id, str) or not id.isidentifier():
            raise ValueError(f"id must be a short identifier such as 'few_labels_gain', got {id!r}")
        if any(item["id"] == id for item in self.items):
            raise ValueError(f"claim id {id!r} is recorded twice in {self.notebook}")
        if not (expected in EXPECTED or isinstance(expected, dict)):
            raise ValueError(
                f"expected must be one of {EXPECTED} or {{'above' | 'below' | 'within': x}}, "
                f"got {expected!r}"
            )
        holds = bool(comparison.holds(expected))
        item = {
            "id": id,
            "text": text,
            "estimate": float(comparison.estimate),
            "ci95": [float(comparison.ci95[0]), float(comparison.ci95[1])],
            "n_seeds": int(comparison.n_seeds),
            "unit": comparison.unit,
            "expected": expected,
            "holds": holds,
            "verdict": comparison.verdict(),
        }
        self.items.append(item)
        if show:
            print(f"claim {id} {'holds' if holds else 'DOES NOT HOLD'}: {item['verdict']}")
        return item

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        """One line per claim: holds or not, the sentence, the verdict."""
        return "\n".join(
            f"[{'holds' if c['holds'] else 'FAILS'}] {c['text']}: {c['verdict']}"
            for c in self.items
        )


#: where the course keeps the full-mode figures its notebooks quote: <repository>/data/full_mode
FULL_MODE_DIR = Path(__file__).resolve().parents[2] / "data" / "full_mode"


def _plain(value):
    """Turn tensors, numpy scalars and nested containers into JSON-ready Python values."""
    if hasattr(value, "tolist"):  # torch.Tensor, numpy array or numpy scalar
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot store {type(value).__name__} in a results file: {value!r}")


def save_results(
    notebook: str,
    figures: dict,
    results_dir: str | Path | None,
    claims: Claims | list | None = None,
) -> Path | None:
    """Write ``figures`` (and ``claims``) to ``<results_dir>/<notebook>.json``; return the path.

    ``notebook`` is the notebook's stem, e.g. ``"03_training_loop"``. Values may be numbers,
    strings, lists, dicts, tensors or numpy values. ``claims``: the notebook's :class:`Claims`.
    Returns ``None`` and writes nothing when ``results_dir`` is ``None``.
    """
    if results_dir is None:
        return None
    path = Path(results_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    items = list(claims.items if isinstance(claims, Claims) else claims or [])
    payload = {"notebook": notebook, "figures": _plain(figures), "claims": _plain(items)}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_results(path: str | Path) -> dict:
    """Read a file written by :func:`save_results`; returns its ``figures`` dict."""
    return json.loads(Path(path).read_text())["figures"]


def load_claims(path: str | Path) -> list[dict]:
    """The claims of a file written by :func:`save_results` (``[]`` when it has none)."""
    return json.loads(Path(path).read_text()).get("claims", [])


def load_full_mode(notebook: str, folder: str | Path | None = None) -> dict | None:
    """The full-mode record of ``notebook``, or ``None`` when there is none.

    A record (``kdlib.course.records``, made by ``kdlib course run --full --record``) is the
    notebook's full-mode results (``figures``, ``claims``) with ``date``, ``machine``,
    ``command``, ``seconds`` and the digests of the notebook and the library that made it. Notebooks
    show them beside the figures of the run the reader just made, so that a sentence about a
    result that only full mode shows can be written conditionally and still be checked.
    ``folder`` defaults to the repository's ``data/full_mode`` (``$KDLIB_FULL_MODE`` overrides).
    """
    folder = Path(folder or os.environ.get("KDLIB_FULL_MODE") or FULL_MODE_DIR)
    path = folder / f"{notebook}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())
