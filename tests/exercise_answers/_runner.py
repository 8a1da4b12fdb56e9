"""Run a solution notebook's exercises against the answer sets of tests/exercise_answers/.

    python tests/exercise_answers/_runner.py solutions/01_intuition/01_intuition.ipynb OUT.json

In one process, in fast mode, the notebook's code cells run in order (plain ``exec`` in one
namespace, as a kernel would) up to its last graded test cell. At each answer cell the
namespace is saved, and every variant is tried on it: the solution itself, then each variant of
``tests/exercise_answers/<notebook>/<answer grade_id>.py``. A variant is the answer cell's
replacement: its source runs, then the exercise's graded test cells, hidden tests included
(taken from solutions/, as ``nbgrader autograde`` restores them), each recorded as passed or
failed with its error. A ``kdlib`` variant (an answer that only calls kdlib) runs a second time
with :func:`kdlib.exercises.blocked` switched off, to show that it fails *because* of the
blocking. The namespace is restored after each variant, then the solution runs so that the
notebook goes on as written.

An answer set file holds its variants one after another, each introduced by a line

    # %% <kind>: <what it is>

with kind ``alternative`` (a correct answer written differently: must pass every test),
``kdlib`` (must fail every test while kdlib is blocked, and pass them all when it is not) or
``bug`` (a plausible mistake: at least one test must fail). A file whose exercise has no kdlib
counterpart says so on a line ``# no kdlib implementation: <why>``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import re
import sys
import traceback
from pathlib import Path

VARIANT = re.compile(r"^# %% (alternative|kdlib|bug): (.+)$")
KINDS = ("alternative", "kdlib", "bug")


def parse_answers(text: str) -> list[tuple[str, str, str]]:
    """``[(kind, label, source), ...]`` of an answer set file."""
    variants, current = [], None
    for line in text.splitlines():
        match = VARIANT.match(line)
        if match:
            current = [match.group(1), match.group(2).strip(), []]
            variants.append(current)
        elif current is not None:
            current[2].append(line)
    return [(kind, label, "\n".join(lines).strip() + "\n") for kind, label, lines in variants]


def exercises(nb) -> list[dict]:
    """The exercises of a notebook: each answer cell and the graded cells that follow it."""
    found = []
    for index, cell in enumerate(nb.cells):
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type != "code":
            continue
        if meta.get("solution"):
            found.append({"answer": index, "grade_id": meta["grade_id"], "tests": []})
        elif meta.get("grade") and found:
            found[-1]["tests"].append(index)
    return [e for e in found if e["tests"]]


def _run(source: str, ns: dict, name: str) -> tuple[str | None, str]:
    """exec ``source`` in ``ns``; returns (error or None, what it wrote to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            exec(compile(source, f"<{name}>", "exec"), ns)
        except BaseException as exc:  # noqa: BLE001 - a failing test is a result
            if isinstance(exc, KeyboardInterrupt):
                raise
            tb = traceback.extract_tb(exc.__traceback__)
            where = next(
                (f"{f.filename}:{f.lineno}" for f in reversed(tb) if f.filename.startswith("<")), ""
            )
            return f"{type(exc).__name__}: {exc} ({where})", err.getvalue()
    return None, err.getvalue()


@contextlib.contextmanager
def _blocking_off():
    """kdlib.exercises.blocked that blocks nothing (the references still work)."""
    import kdlib.exercises as ex

    real = ex.blocked

    @contextlib.contextmanager
    def passthrough(*names, namespace=None):
        yield ex.Blocked([ex._Entry(n, ex._resolve(n)) for n in names])

    ex.blocked = passthrough
    try:
        yield
    finally:
        ex.blocked = real


def _try(variant_source, label, tests, nb, ns, snapshot) -> dict:
    ns.clear()
    ns.update(snapshot)
    error, _ = _run(variant_source, ns, label)
    if error is not None:
        return {"exec_error": error}
    results, stderr = {}, {}
    for index in tests:
        gid = nb.cells[index].metadata["nbgrader"]["grade_id"]
        results[gid], stderr[gid] = _run(nb.cells[index].source, ns, gid)
    return {"results": results, "stderr": stderr}


def run_notebook(path: Path, answers_dir: Path) -> dict:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    found = exercises(nb)
    if not found:
        return {}
    by_answer = {e["answer"]: e for e in found}
    last = max(i for e in found for i in e["tests"])
    ns = {"__name__": "__main__", "__builtins__": builtins}
    report = {}
    for index, cell in enumerate(nb.cells[: last + 1]):
        if cell.cell_type != "code":
            continue
        exercise = by_answer.get(index)
        if exercise is not None:
            gid = exercise["grade_id"]
            snapshot = dict(ns)
            file = answers_dir / f"{gid}.py"
            variants = [("solution", "the solution", cell.source)]
            if file.exists():
                variants += parse_answers(file.read_text())
            rows = []
            for kind, label, source in variants:
                row = {
                    "kind": kind,
                    "label": label,
                    **_try(source, label, exercise["tests"], nb, ns, snapshot),
                }
                if kind == "kdlib" and "results" in row:
                    with _blocking_off():
                        row["unblocked"] = _try(
                            source, label, exercise["tests"], nb, ns, snapshot
                        ).get("results")
                rows.append(row)
            report[gid] = {
                "tests": [nb.cells[i].metadata["nbgrader"]["grade_id"] for i in exercise["tests"]],
                "answer_file": file.exists(),
                "variants": rows,
            }
            ns.clear()
            ns.update(snapshot)
        error, _ = _run(cell.source, ns, f"cell {index}")
        if error is not None and not cell.metadata.get("nbgrader", {}).get("grade"):
            raise RuntimeError(f"{path.name}: cell {index} failed: {error}")
    return report


def main(argv: list[str]) -> int:
    path, out = Path(argv[0]), Path(argv[1])
    os.environ["KDLIB_FAST"] = "1"
    os.environ.setdefault("MPLBACKEND", "agg")
    root = Path(__file__).resolve().parent
    report = run_notebook(path, root / path.parent.name)
    out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
