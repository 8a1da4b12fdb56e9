"""``kdlib grade`` throughput: submissions per minute per core, and one student's notebooks.

    python -m benchmarks.grading                         # 60 submissions of 01, then the course
    python -m benchmarks.grading --students 12 --skip-course --out runs/grading.json

Two measurements, each in one run of this script (the figures to compare are ratios of runs
made side by side, on the same machine, under the same load):

1. **A generated class**: ``--students`` submissions of ``--assignment`` (default
   ``01_intuition``), a third the solution, a third the untouched release, a third the release
   with half of the answers filled in from the solution; graded with ``kdlib grade`` at
   ``--jobs 1`` and ``--jobs 2`` (``--skip-canary``: the canary is a fixed cost per run, timed
   apart), each into a gradebook of its own. Reported: seconds, submissions per minute, and
   submissions per minute per core (a process is given one core's worth of threads), and the
   grades.csv of both runs compared (they must be equal).
2. **One student's ten notebooks** (every assignment of the course, the solutions as
   submitted), ``--jobs 2``, in three settings taken in turn: the default (cells no grade
   depends on left out), ``--run-all-cells`` (every cell, as before), and the default with the
   canary. Reported: seconds of each and the ratio to ``--run-all-cells``.

The one-minute load average is sampled every second during each grading and its mean printed
beside the figure. Everything goes to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.course import LoadSampler

ROOT = Path(__file__).resolve().parent.parent


def _class(folder: Path, assignment: str, students: int) -> None:
    """A class of ``students`` submissions of ``assignment`` (nbgrader layout)."""
    import nbformat

    src = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    rel = nbformat.read(ROOT / "notebooks" / assignment / f"{assignment}.ipynb", as_version=4)
    answers = [i for i, c in enumerate(src.cells) if c.metadata.get("nbgrader", {}).get("solution")]
    for n in range(students):
        kind = n % 3
        if kind == 0:
            nb = src
        elif kind == 1:
            nb = rel
        else:
            nb = nbformat.from_dict(json.loads(json.dumps(rel)))
            for i in answers[: max(1, len(answers) // 2)]:
                nb.cells[i].source = src.cells[i].source
        target = folder / f"s{n:04d}" / assignment
        target.mkdir(parents=True)
        nbformat.write(nb, target / f"{assignment}.ipynb")


def _grade(subs: Path, out: Path, names: list[str], jobs: int, **options) -> dict:
    from kdlib.course.grade import grade

    with LoadSampler() as sampler:
        start = time.perf_counter()
        report = grade(
            subs,
            names,
            course_dir=ROOT,
            out=out,
            jobs=jobs,
            feedback=True,
            echo=lambda *a, **k: None,
            **options,
        )
        seconds = time.perf_counter() - start
    load = sampler.mean
    return {
        "seconds": seconds,
        "load": load,
        "graded": len(report.graded),
        "issues": len(report.issues),
        "csv": report.csv_path.read_text("utf-8"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assignment", default="01_intuition")
    parser.add_argument("--students", type=int, default=60)
    parser.add_argument("--skip-class", action="store_true", help="only the ten notebooks")
    parser.add_argument("--skip-course", action="store_true", help="only the generated class")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    args = parser.parse_args(argv)

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore", message=".*not in session.*")  # nbgrader's SQLAlchemy noise
    record = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="kdlib-bench-grade-") as tmp:
        tmp = Path(tmp)
        if not args.skip_class:
            subs = tmp / "class"
            _class(subs, args.assignment, args.students)
            rows = {}
            for jobs in (1, 2):
                r = _grade(subs, tmp / f"out-j{jobs}", [args.assignment], jobs, canary=False)
                r["per_minute"] = 60 * r["graded"] / r["seconds"]
                r["per_minute_per_core"] = r["per_minute"] / jobs
                rows[jobs] = r
                print(
                    f"{args.students} submissions of {args.assignment}, --jobs {jobs}: "
                    f"{r['seconds']:.0f} s, {r['per_minute']:.1f}/min, "
                    f"{r['per_minute_per_core']:.1f}/min/core (load {r['load']:.1f})",
                    flush=True,
                )
            same = rows[1].pop("csv") == rows[2].pop("csv")
            print(f"grades.csv at --jobs 1 and 2 equal: {same}")
            record["class"] = {
                "assignment": args.assignment,
                "students": args.students,
                "runs": rows,
                "same_csv": same,
            }
        if not args.skip_course:
            subs = tmp / "student"
            names = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
            for name in names:
                shutil.copytree(ROOT / "solutions" / name, subs / "ada" / name)
            settings = {
                "default": {"canary": False},
                "run_all_cells": {"canary": False, "run_all_cells": True},
                "with_canary": {"canary": True},
            }
            course = {}
            for label, options in settings.items():
                r = _grade(subs, tmp / f"out-{label}", names, 2, **options)
                r.pop("csv")
                course[label] = r
                print(
                    f"one student's {len(names)} notebooks, --jobs 2, {label}: "
                    f"{r['seconds']:.0f} s (load {r['load']:.1f}, issues {r['issues']})",
                    flush=True,
                )
            base = course["run_all_cells"]["seconds"]
            for r in course.values():
                r["ratio_to_run_all_cells"] = base / r["seconds"]
            record["course"] = course
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
