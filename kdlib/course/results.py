"""Headline figures that a notebook leaves behind for ``kdlib course run`` to collect.

Every course notebook ends by calling :func:`save_results` with a flat dict of the numbers it
measured. ``results_dir`` is a papermill parameter of each notebook; when it is ``None`` (a
student running the notebook by hand) nothing is written.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

__all__ = ["save_results", "load_results"]


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


def save_results(notebook: str, figures: dict, results_dir: str | Path | None) -> Path | None:
    """Write ``figures`` to ``<results_dir>/<notebook>.json`` and return the path.

    ``notebook`` is the notebook's stem, e.g. ``"03_training_loop"``. Values may be numbers,
    strings, lists, dicts, tensors or numpy values. Returns ``None`` and writes nothing when
    ``results_dir`` is ``None``.
    """
    if results_dir is None:
        return None
    path = Path(results_dir) / f"{notebook}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"notebook": notebook, "figures": _plain(figures)}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def load_results(path: str | Path) -> dict:
    """Read a file written by :func:`save_results`; returns its ``figures`` dict."""
    return json.loads(Path(path).read_text())["figures"]
