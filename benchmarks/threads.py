"""Which models gain from more CPU threads: training-step time at 1, 2, ... threads.

    python -m benchmarks.threads                    # every workload, quiet, then beside a busy loop
    python -m benchmarks.threads --workloads mlp32 cnn32x3 --no-busy --repeats 3

One training step (forward, cross-entropy, backward, Adam step; batch 64) of each workload is
timed at each thread count (``torch.set_num_threads``), the counts taken in turn (1, 2, 1, 2,
...) ``--repeats`` times so that a busy spell of a shared machine hits each alike; the figure is
the median step time. ``speedup`` = the 1-thread time over the N-thread time (above 1: the
threads pay). With ``--busy`` (the default) everything is measured again beside one CPU-bound
competitor process, ``torch.set_num_threads(1); while True: a = (a @ a).tanh()``, the situation
of a laptop running anything else. The load average is recorded beside each measurement.

kdlib's thread policy (``kdlib.runtime``) uses one thread for the digits models; the table in
``benchmarks/README.md`` shows why and where the crossover lies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdlib.models import MLP, SmallCNN, resnet8, resnet8x4

COMPETITOR = (
    "import torch\ntorch.set_num_threads(1)\na = torch.rand(256, 256) / 16\n"
    "while True:\n    a = (a @ a).tanh()\n"
)

WORKLOADS = {  # name: (model factory, input shape without the batch)
    "mlp32": (lambda: MLP(64, (32,), 10), (1, 8, 8)),
    "cnn8x2": (lambda: SmallCNN(1, 10, width=8, depth=2), (1, 8, 8)),
    "cnn32x3": (lambda: SmallCNN(1, 10, width=32, depth=3), (1, 8, 8)),
    "mlp1024x2": (lambda: MLP(64, (1024, 1024), 10), (1, 8, 8)),
    "resnet8": (lambda: resnet8(num_classes=10), (3, 32, 32)),
    "resnet8x4": (lambda: resnet8x4(num_classes=10), (3, 32, 32)),
}


def step_seconds(model, x, y, optimizer, steps: int) -> float:
    """Median seconds of one training step over ``steps`` steps (after one warm-up step)."""
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, counts: list[int], repeats: int, budget: float) -> dict:
    build, shape = WORKLOADS[name]
    torch.manual_seed(0)
    model = build()
    x, y = torch.rand(64, *shape), torch.randint(0, 10, (64,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.set_num_threads(1)
    first = step_seconds(model, x, y, optimizer, 3)
    steps = max(3, min(200, int(budget / max(first, 1e-5))))  # about `budget` s per count
    samples = {n: [] for n in counts}
    loads = []
    for _ in range(repeats):
        for n in counts:
            torch.set_num_threads(n)
            samples[n].append(step_seconds(model, x, y, optimizer, steps))
            loads.append(os.getloadavg()[0])
    median = {n: statistics.median(v) for n, v in samples.items()}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "ms_per_step": {str(n): 1e3 * t for n, t in median.items()},
        "speedup": {str(n): median[counts[0]] / t for n, t in median.items()},
        "load_average": statistics.mean(loads),
    }


def run(workloads, counts, repeats, budget, busy) -> dict:
    competitor = None
    if busy:
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
        time.sleep(1.0)
    try:
        return {name: measure(name, counts, repeats, budget) for name in workloads}
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def table(results: dict, counts: list[int]) -> str:
    head = "| workload | parameters | " + " | ".join(f"{n} thr ms/step" for n in counts)
    head += " | " + " | ".join(f"speedup {n}" for n in counts[1:]) + " | load avg |"
    rule = "|" + "---|" * (3 + 2 * len(counts) - 1)
    rows = [head, rule]
    for name, r in results.items():
        cells = [name, f"{r['parameters']:,}"]
        cells += [f"{r['ms_per_step'][str(n)]:.3f}" for n in counts]
        cells += [f"{r['speedup'][str(n)]:.2f}" for n in counts[1:]]
        cells.append(f"{r['load_average']:.1f}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=None,
        help="thread counts (default: 1 and every core)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    parser.add_argument(
        "--no-busy",
        dest="busy",
        action="store_false",
        help="skip the measurement beside a busy loop",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    counts = args.threads or sorted({1, len(os.sched_getaffinity(0))})
    results = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "torch": torch.__version__,
            "load_average_before": os.getloadavg()[0],
        }
    }
    for busy in (False, True) if args.busy else (False,):
        label = "busy" if busy else "quiet"
        results[label] = run(args.workloads, counts, args.repeats, args.budget, busy)
        print(f"\n{label} ({'beside one busy loop' if busy else 'no competitor'}):")
        print(table(results[label], counts))
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
