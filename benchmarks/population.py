"""S seeds as one population against S runs one after the other (one CPU thread).

    python -m benchmarks.population                         # MLP and SmallCNN, S = 1, 4, 8, 16
    python -m benchmarks.population --sizes 1 8 --repeats 1 --epochs 2 --out /tmp/p.json
    python -m benchmarks.population --clock process     # CPU time: for a busy machine

For each workload (the course's digits students: ``MLP(64, (32,), 10)`` and
``SmallCNN(width=8, depth=2)``; batch 64, Adam, ``--epochs`` epochs over the 1,000 training
digits) and each population size S, three things are timed in one process, in turn, ``--repeats``
times (the figure is the median, so a busy spell of a shared machine hits each alike):

- ``one``: one seed with ``train_supervised`` (the unit of every ratio);
- ``sequential``: S seeds with ``train_supervised``, one after the other;
- ``population``: S seeds with ``kdlib.population.train_population``.

Ratios: ``population / one`` (the cost of S seeds in units of one seed; the issue's target is
at most 3 at S = 8) and ``sequential / population`` (the speed-up over the loop). Recorded in
``benchmarks/README.md``; the load average is stored beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from kdlib import data
from kdlib.distill import train_supervised
from kdlib.models import MLP, SmallCNN
from kdlib.population import train_population
from kdlib.runtime import seed_everything

WORKLOADS = {
    "mlp64-32-10": lambda: MLP(64, (32,), 10),
    "smallcnn8x2": lambda: SmallCNN(1, 10, width=8, depth=2),
}


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _timed(fn, clock=time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def measure(model_fn, sizes, epochs: int, repeats: int, clock=time.perf_counter) -> dict:
    digits = data.load_digits()

    def loader():
        return digits.train.loader(64, shuffle=True, seed=0)

    def one(seed=0):
        seed_everything(seed)
        train_supervised(model_fn(), loader(), epochs, lr=1e-2, device="cpu", progress=False)

    def sequential(n):
        for s in range(n):
            one(s)

    def population(n):
        train_population(model_fn, range(n), loader(), epochs, lr=1e-2, device="cpu")

    one()  # warm-up: first calls pay for allocations and lazy initialisation
    population(max(sizes))
    times: dict = {"one": []}
    for n in sizes:
        times[f"sequential_{n}"], times[f"population_{n}"] = [], []
    for _ in range(repeats):
        times["one"].append(_timed(one, clock))
        for n in sizes:
            times[f"sequential_{n}"].append(_timed(lambda n=n: sequential(n), clock))
            times[f"population_{n}"].append(_timed(lambda n=n: population(n), clock))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = {}
    for n in sizes:
        rows[str(n)] = {
            "sequential_s": med[f"sequential_{n}"],
            "population_s": med[f"population_{n}"],
            "population_over_one": med[f"population_{n}"] / med["one"],
            "sequential_over_population": med[f"sequential_{n}"] / med[f"population_{n}"],
        }
    return {"one_seed_s": med["one"], "sizes": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="wall: elapsed time; process: this process's CPU time (with one thread, what the "
        "run costs whatever else the machine runs)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("KDLIB_PROGRESS", "0")
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_before": os.getloadavg()[0],
        },
        "epochs": args.epochs,
        "repeats": args.repeats,
        "clock": args.clock,
        "workloads": {},
    }
    for name in args.workloads:
        results["workloads"][name] = measure(
            WORKLOADS[name], args.sizes, args.epochs, args.repeats, CLOCKS[args.clock]
        )
        w = results["workloads"][name]
        print(f"{name}: one seed {w['one_seed_s']:.3f} s ({args.epochs} epochs)")
        print(f"{'S':>4} {'sequential':>11} {'population':>11} {'pop/one':>8} {'seq/pop':>8}")
        for n, row in w["sizes"].items():
            print(
                f"{n:>4} {row['sequential_s']:>10.3f}s {row['population_s']:>10.3f}s "
                f"{row['population_over_one']:>8.2f} {row['sequential_over_population']:>8.2f}"
            )
    results["machine"]["load_after"] = os.getloadavg()[0]
    print(
        f"load average {results['machine']['load_before']:.2f} -> "
        f"{results['machine']['load_after']:.2f}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
