"""Seconds per notebook in fast mode, quiet and beside a busy process, at two thread policies.

    python -m benchmarks.course                        # every notebook: about 15 min on 2 cores
    python -m benchmarks.course --only 01,03 --repeats 1
    python -m benchmarks.course --only 02 --readme none --out runs/course.json

Each selected solution notebook is run by ``kdlib course run`` (fast mode, one notebook at a
time, ``--jobs 1``) in four settings:

- ``kdlib``: kdlib's thread policy (``--threads auto``: one thread for the digits models);
- ``torch``: PyTorch's default (``--threads torch``: one thread per core), as before the policy;

each ``quiet`` (nothing else started by the benchmark) and ``busy``, beside one CPU-bound
competitor process, ``torch.set_num_threads(1); while True: a = (a @ a).tanh()``, which stands
for a browser, another notebook or a test run. The settings are taken in turn for each notebook
(``--repeats`` times; the figure is the median), so a busy spell of a shared machine hits them
alike, and the one-minute load average is sampled every second during each run (its mean is
reported: on a shared machine it says how quiet "quiet" was). The teacher cache is warmed by
one untimed run of each notebook first (``--cold`` gives every run an empty cache instead).

Writes a Markdown table (seconds, busy/quiet ratio, load average) between the markers
``<!-- course-benchmark -->`` and ``<!-- /course-benchmark -->`` of ``--readme``
(``benchmarks/README.md``; ``none``: print only) and every figure to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from kdlib.course.run import discover_notebooks, find_repo_root, run_course, select_notebooks

ROOT = Path(__file__).resolve().parent.parent
COMPETITOR = (
    "import torch\ntorch.set_num_threads(1)\na = torch.rand(256, 256) / 16\n"
    "while True:\n    a = (a @ a).tanh()\n"
)
POLICIES = ("kdlib", "torch")
SETTINGS = tuple((policy, load) for policy in POLICIES for load in ("quiet", "busy"))
START, END = "<!-- course-benchmark -->", "<!-- /course-benchmark -->"


class LoadSampler:
    """The one-minute load average, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 1.0):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def run_one(source: Path, stem: str, policy: str, busy: bool, cache: str | None) -> dict:
    """One notebook, one setting: ``{"seconds", "status", "load_average"}``."""
    competitor = None
    saved = os.environ.get("KDLIB_CACHE")
    if cache is not None:
        os.environ["KDLIB_CACHE"] = cache
    try:
        if busy:
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
            time.sleep(1.0)  # let it start spinning
        with tempfile.TemporaryDirectory() as out, LoadSampler() as load:
            run = run_course(
                source,
                out,
                only=stem,
                fast=True,
                device="cpu",
                jobs=1,
                threads="auto" if policy == "kdlib" else "torch",
                render_html=False,
                progress=False,
                echo=lambda *a, **k: None,
            )
        (result,) = run.notebooks
        return {"seconds": result.seconds, "status": result.status, "load_average": load.mean}
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
        if cache is not None:
            if saved is None:
                os.environ.pop("KDLIB_CACHE", None)
            else:
                os.environ["KDLIB_CACHE"] = saved


def benchmark(source: Path, only: str | None, repeats: int, cold: bool, echo=print) -> dict:
    notebooks = [p.stem for p in select_notebooks(discover_notebooks(source), only)]
    if not notebooks:
        raise ValueError(f"no notebooks under {source}")
    results = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "load_average_before": os.getloadavg()},
        "repeats": repeats,
        "teacher_cache": "cold" if cold else "warm",
        "notebooks": {},
    }
    with tempfile.TemporaryDirectory() as scratch:
        warm_cache = os.path.join(scratch, "cache")
        for stem in notebooks:
            if not cold:  # fill the teacher cache (untimed)
                run_one(source, stem, "kdlib", False, warm_cache)
            runs = {f"{p}_{b}": [] for p, b in SETTINGS}
            for _ in range(repeats):
                for policy, load in SETTINGS:
                    cache = (
                        os.path.join(scratch, f"cold-{time.monotonic_ns()}") if cold else warm_cache
                    )
                    runs[f"{policy}_{load}"].append(
                        run_one(source, stem, policy, load == "busy", cache)
                    )
            figures = {}
            for name, samples in runs.items():
                figures[name] = {
                    "seconds": statistics.median(s["seconds"] for s in samples),
                    "load_average": statistics.mean(s["load_average"] for s in samples),
                    "status": ",".join(sorted({s["status"] for s in samples})),
                    "runs": samples,
                }
            for policy in POLICIES:
                quiet, busy = figures[f"{policy}_quiet"], figures[f"{policy}_busy"]
                figures[f"{policy}_busy_over_quiet"] = busy["seconds"] / max(quiet["seconds"], 1e-9)
            results["notebooks"][stem] = figures
            echo(row(stem, figures))
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return results


HEADER = (
    "| notebook | kdlib quiet s | kdlib busy s | kdlib busy/quiet | torch quiet s | "
    "torch busy s | torch busy/quiet | load avg (kq, kb, tq, tb) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---|"
)


def row(stem: str, f: dict) -> str:
    loads = ", ".join(f"{f[f'{p}_{b}']['load_average']:.1f}" for p, b in SETTINGS)
    bad = [k for k, v in f.items() if isinstance(v, dict) and v["status"] != "ok"]
    note = f" (not ok: {', '.join(bad)})" if bad else ""
    return (
        f"| {stem}{note} | {f['kdlib_quiet']['seconds']:.1f} | {f['kdlib_busy']['seconds']:.1f} | "
        f"{f['kdlib_busy_over_quiet']:.2f} | {f['torch_quiet']['seconds']:.1f} | "
        f"{f['torch_busy']['seconds']:.1f} | {f['torch_busy_over_quiet']:.2f} | {loads} |"
    )


def markdown(results: dict, only: str | None) -> str:
    lines = [
        f"Run {results['started']} on {results['machine']['cpus']} cores, teacher cache "
        f"{results['teacher_cache']}, median of {results['repeats']} run(s) per setting"
        + (f", notebooks {only}" if only else "")
        + f"; one-minute load average before: {results['machine']['load_average_before'][0]:.1f}.",
        "",
        HEADER,
    ]
    lines += [row(stem, f) for stem, f in results["notebooks"].items()]
    return "\n".join(lines)


def write_readme(path: Path, text: str) -> None:
    body = path.read_text() if path.exists() else ""
    block = f"{START}\n{text}\n{END}"
    if START in body and END in body:
        body = body[: body.index(START)] + block + body[body.index(END) + len(END) :]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None, help="notebooks, as for kdlib course run --only")
    parser.add_argument("--source", type=Path, default=None, help="default: solutions/")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cold", action="store_true", help="an empty teacher cache every run")
    parser.add_argument("--readme", default=str(ROOT / "benchmarks" / "README.md"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "course.json")
    args = parser.parse_args(argv)
    source = args.source or find_repo_root() / "solutions"
    print(HEADER)
    results = benchmark(source, args.only, args.repeats, args.cold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    text = markdown(results, args.only)
    if args.readme != "none":
        write_readme(Path(args.readme), text)
    print(text)
    return (
        0
        if all(
            f[f"{p}_{b}"]["status"] == "ok"
            for f in results["notebooks"].values()
            for p, b in SETTINGS
        )
        else 1
    )


if __name__ == "__main__":
    raise SystemExit(main())
