"""The canary: before grading a class, grade the course's own notebooks.

For each assignment, ``kdlib grade`` first autogrades two submissions of its own, in the same
sandbox, limits, timeout and settings as the class, into a scratch gradebook (the course's is
not touched yet):

- the **solution** (``solutions/NN_name``): it must score full marks and raise no issue;
- the **untouched release**: it must score 0 (every graded test needs the student's answer)
  and raise no issue.

If either differs, grading stops before anything reaches the course's gradebook, with one line
that says what differed, e.g. ``kdlib`` not importable in the sandbox (with the folder the
grader imports it from), a cell cut at the timeout, or a flag raised on the course's own code.
A broken grading environment then costs one canary, not a class of silent zeros.
``--skip-canary`` grades without it (said in the output).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from kdlib.course.autograde import autograde_all, guarded, prepare_submission
from kdlib.course.coursedir import GradingError, GradingRun
from kdlib.course.export import fmt_score
from kdlib.course.submissions import Submission

SOLUTION, RELEASE = "kdlib-canary-solution", "kdlib-canary-release"
RELEASE_SCORE = 0.0  # what the untouched release scores


class CanaryFailed(GradingError):
    """The course's own notebooks did not grade as expected: nothing was graded."""


def run_canary(run: GradingRun, api, prepared: dict, release_dir: Path, work: Path) -> str:
    """Grade the solution and the release of every assignment in ``prepared`` (name ->
    (template gradebook, checksums)); raise :class:`CanaryFailed` with one line at the first
    difference, else return a one-line summary."""
    import shutil

    summary = []
    for name, (template, checksums) in prepared.items():
        root = work / "canary" / name
        db = root / "gradebook.db"
        db.parent.mkdir(parents=True)
        shutil.copyfile(template, db)  # the assignment, no student
        crun = dataclasses.replace(
            run,
            out=root / "out",
            submitted=root / "out" / "submitted",
            in_place=False,
            db_url="sqlite:///" + str(db),
            feedback=False,
            issues=[],
            graded=[],
            echo=lambda *args, **kwargs: None,
        )
        subs = []
        for student, folder in ((SOLUTION, run.source_dir / name), (RELEASE, release_dir / name)):
            files = [folder / f"{nb}.ipynb" for nb in run.known[name]]
            subs.append(Submission(student, name, folder, files, folder))
        jobs = []
        for i, sub in enumerate(subs):
            job = guarded(
                crun, sub, prepare_submission, crun, sub, checksums, template, root / f"job{i}"
            )
            if job is not None:
                jobs.append(job)
        saved = api.coursedir.db_url
        api.coursedir.db_url = crun.db_url
        try:
            autograde_all(crun, api, jobs)
        finally:
            api.coursedir.db_url = saved
        line = _verdict(run, crun, name, api.coursedir.course_id)
        run.echo(f"canary: {name}: {line}")
        summary.append(f"{name} {line}")
    return "; ".join(summary)


def _verdict(run: GradingRun, crun: GradingRun, name: str, course_id: str) -> str:
    """The canary's result for one assignment, or CanaryFailed at the first difference."""
    from nbgrader.api import Gradebook, MissingEntry

    def fail(what: str) -> CanaryFailed:
        return CanaryFailed(
            f"canary: {name}: {what}; nothing was graded (fix the grading environment, or "
            "--skip-canary to grade anyway)"
        )

    scores = {}
    with Gradebook(crun.db_url, course_id) as gb:
        for student in (SOLUTION, RELEASE):
            try:
                sub = gb.find_submission(name, student)
                # the autograded part: a written answer (graded by hand) scores nothing yet
                scores[student] = (sub.code_score, sub.max_code_score)
            except MissingEntry:
                scores[student] = None
    for student, what in ((SOLUTION, "the solution"), (RELEASE, "the untouched release")):
        issues = [i for i in crun.issues if i.student == student]
        if issues:
            first = issues[0]
            raise fail(f"{what} was reported ({first.kind}: {_short(first.detail)})")
        if scores[student] is None:
            raise fail(f"{what} was not graded")
    score, top = scores[SOLUTION]
    if score != top:
        raise fail(
            f"the solution scored {fmt_score(score)}/{fmt_score(top)} instead of full marks "
            f"({_first_error(crun, name, SOLUTION)})"
        )
    score, top = scores[RELEASE]
    if score != RELEASE_SCORE:
        raise fail(
            f"the untouched release scored {fmt_score(score)}/{fmt_score(top)} instead of "
            f"{fmt_score(RELEASE_SCORE)}"
        )
    return (
        f"solution {fmt_score(top)}/{fmt_score(top)} autograded, release 0/{fmt_score(top)}, "
        "no flags"
    )


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_error(crun: GradingRun, name: str, student: str) -> str:
    """The first error an autograded notebook of the canary shows, said in one line; for a
    failed import of kdlib, also where the grader imports it from."""
    import nbformat

    folder = crun.out / "autograded" / student / name
    for path in sorted(folder.glob("*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        for index, cell in enumerate(nb.cells, start=1):
            for output in cell.get("outputs", []):
                if output.get("output_type") != "error":
                    continue
                where = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
                text = f"{where or f'cell {index}'}: {output.get('ename')}: {output.get('evalue')}"
                if re.search(r"No module named '?kdlib", text) or (
                    output.get("ename") == "ImportError" and "kdlib" in text
                ):
                    text += f" ({_kdlib_where()})"
                return _short(text)
    return "no cell shows an error"


def _kdlib_where() -> str:
    """Where the grader imports kdlib from, and what the kernel is given to find it."""
    import importlib.util

    from kdlib.course.sandbox import kdlib_path_entry

    spec = importlib.util.find_spec("kdlib")
    home = list(spec.submodule_search_locations or [])[0] if spec else "nowhere"
    entry = kdlib_path_entry()
    given = f"PYTHONPATH={entry}" if entry else "its site-packages"
    return (
        f"kdlib not importable in the kernel: the grader's kdlib is {home}; the kernel gets {given}"
    )
