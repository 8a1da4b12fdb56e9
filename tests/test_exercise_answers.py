"""Every graded exercise is graded on the student's own code, and its tests tell answers apart.

For each exercise of solutions/ (answer sets in tests/exercise_answers/, format in its
_runner.py): the solution passes every graded test cell (hidden tests included) and writes
nothing to stderr; each correct answer written differently passes them all; an answer that only
calls kdlib's own implementation fails every one of them with kdlib.exercises.BlockedError, and
passes them all once the blocking is switched off (so it fails *because* kdlib is blocked); each
planted bug fails at least one.

One process per notebook runs its cells once, in fast mode, then tries every variant on the
saved namespace (no kernel, no re-execution of the notebook per answer); two at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
ANSWERS = ROOT / "tests" / "exercise_answers"
sys.path.insert(0, str(ANSWERS))
from _runner import KINDS, exercises, parse_answers  # noqa: E402

sys.path.remove(str(ANSWERS))

SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb"))
NAMES = [p.stem for p in SOLUTIONS]
NO_KDLIB = "# no kdlib implementation:"
# notebooks whose answer sets must exist; a later notebook is checked once its folder exists
REQUIRED = {name for name in NAMES if name[:2] <= "09"}

pytestmark = pytest.mark.notebooks


def _exercise_ids(path: Path) -> list[str]:
    return [e["grade_id"] for e in exercises(nbformat.read(path, as_version=4))]


@pytest.mark.parametrize("path", SOLUTIONS, ids=NAMES)
def test_every_exercise_has_an_answer_set(path):
    if path.stem not in REQUIRED and not (ANSWERS / path.parent.name).is_dir():
        pytest.skip(f"no tests/exercise_answers/{path.parent.name}/ yet")
    for gid in _exercise_ids(path):
        file = ANSWERS / path.parent.name / f"{gid}.py"
        assert file.exists(), f"no answer set {file.relative_to(ROOT)}"
        text = file.read_text()
        kinds = [kind for kind, _, _ in parse_answers(text)]
        assert set(kinds) <= set(KINDS)
        assert "alternative" in kinds, f"{file.name}: no correct answer written differently"
        assert "bug" in kinds, f"{file.name}: no planted bug"
        assert "kdlib" in kinds or NO_KDLIB in text, (
            f"{file.name}: no answer that only calls kdlib (or a line '{NO_KDLIB} <why>')"
        )
    stale = {p.stem for p in (ANSWERS / path.parent.name).glob("*.py")} - set(_exercise_ids(path))
    assert not stale, f"answer sets for exercises that do not exist: {stale}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{notebook: report} for every notebook with an answer set folder, two processes at once."""
    out = tmp_path_factory.mktemp("answers")
    env = dict(
        os.environ, KDLIB_FAST="1", MPLBACKEND="agg", OMP_NUM_THREADS="1", KDLIB_PROGRESS="0"
    )

    def one(path: Path):
        target = out / f"{path.stem}.json"
        proc = subprocess.run(
            [sys.executable, str(ANSWERS / "_runner.py"), str(path), str(target)],
            cwd=out,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            return path.stem, {"error": proc.stdout[-3000:] + proc.stderr[-3000:]}
        return path.stem, json.loads(target.read_text())

    todo = [p for p in SOLUTIONS if (ANSWERS / p.parent.name).is_dir()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, todo))


def _failed(results: dict) -> list[str]:
    return [gid for gid, error in results.items() if error is not None]


@pytest.mark.parametrize("name", NAMES)
def test_answers_are_told_apart(runs, name):
    if name not in runs:
        pytest.skip(f"no answer sets for {name} yet")
    report = runs[name]
    assert "error" not in report, report.get("error")
    assert set(report) == set(_exercise_ids(ROOT / "solutions" / name / f"{name}.ipynb"))
    problems = []
    for gid, exercise in report.items():
        for v in exercise["variants"]:
            what = f"{gid} / {v['kind']}: {v['label']}"
            if "exec_error" in v:
                problems.append(f"{what}: the answer itself does not run: {v['exec_error']}")
                continue
            results, failed = v["results"], _failed(v["results"])
            if v["kind"] in ("solution", "alternative") and failed:
                problems.append(f"{what}: fails {[results[g] for g in failed]}")
            if v["kind"] == "solution":
                noisy = {g: s for g, s in v["stderr"].items() if s}
                if noisy:
                    problems.append(f"{what}: test cells write to stderr: {noisy}")
            if v["kind"] == "kdlib":
                if set(failed) != set(results):
                    passing = set(results) - set(failed)
                    problems.append(f"{what}: passes {passing} (kdlib not blocked)")
                if not all(results[g].startswith("BlockedError") for g in failed):
                    problems.append(f"{what}: fails for another reason: {results}")
                if _failed(v["unblocked"] or {"?": "no result"}):
                    problems.append(f"{what}: fails even with kdlib unblocked: {v['unblocked']}")
            if v["kind"] == "bug" and not failed:
                problems.append(f"{what}: the bug is not caught")
        kinds = {v["kind"] for v in exercise["variants"]}
        if not exercise["answer_file"] or not {"solution", "alternative", "bug"} <= kinds:
            problems.append(f"{gid}: incomplete answer set {sorted(kinds)}")
    assert not problems, "\n".join(problems)
