"""Distillation throughput at 1 and N processes under torchrun (DistributedDataParallel).

    python -m benchmarks.scaling                              # CPU, gloo: 1 and 2 processes
    python -m benchmarks.scaling --device cuda --processes 1 2 4 8 --out gpu-scaling.json

For each process count P, the script starts ``torchrun --nproc_per_node P`` on itself (a free
port on 127.0.0.1) and every rank trains kdlib's ``Distiller`` (tau = 4, alpha = 0.7, Adam lr
1e-3, no teacher cache) on the digits workloads below, ``--batch-size`` samples per process and
step (weak scaling, DDP's convention: P processes take steps of P times the batch). Each rank
uses ``--threads`` torch threads (1 by default), so P processes use P cores. The counts are run
in turn (1, 2, 1, 2, ...) ``--repeats`` times, so a busy spell of a shared machine hits each
alike; the figure is the median over repeats.

Timed: after one warm-up epoch, ``--epochs`` epochs between two barriers, on rank 0 (with CUDA
the epochs end with a synchronisation). ``samples_per_s`` = samples trained by all ranks
together (each rank's padded share, ``ceil(n / P)``, times P, per epoch) over that time;
``speedup`` = that over the 1-process figure of the same repeat (median over repeats);
``efficiency`` = speedup / P. With P = 1 torchrun starts one process and the Distiller trains
without DDP (WORLD_SIZE is 1), the single-process path.

Workloads (the course's digits, 1,000 training images of 8x8):

    digits      SmallCNN teacher (width 32, depth 2), MLP student (one hidden layer of 32):
                2,410 parameters to all-reduce, steps of well under a millisecond
    digits_cnn  the same teacher, SmallCNN student (width 16, depth 2): more compute per step
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

WORKLOADS = ("digits", "digits_cnn")
ROOT = Path(__file__).resolve().parent.parent


def _loadavg():
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# --- one rank ---------------------------------------------------------------------------------


def _worker(args) -> None:
    """One torchrun rank: time every workload, rank 0 writes ``args.result``."""
    from kdlib import distributed as kdist
    from kdlib.data import load_digits
    from kdlib.distill import Distiller
    from kdlib.models import MLP, SmallCNN
    from kdlib.runtime import pick_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    kdist.init_from_env("nccl" if device.type == "cuda" else "gloo")
    world = kdist.world_size()
    train = load_digits(seed=0).train
    results = {}
    for name in args.workload:
        torch.manual_seed(0)
        teacher = SmallCNN(in_channels=1, num_classes=10, width=32, depth=2)
        student = MLP(64, (32,), 10) if name == "digits" else SmallCNN(1, 10, width=16, depth=2)
        distiller = Distiller(
            student, teacher, temperature=4.0, alpha=0.7, lr=1e-3, device=device, progress=False
        )
        loader = train.loader(args.batch_size, shuffle=True, seed=0)
        distiller.fit(loader, 1)  # warm-up
        kdist.barrier()
        if distiller.device.type == "cuda":
            torch.cuda.synchronize(distiller.device)
        start = time.perf_counter()
        distiller.fit(loader, 1 + args.epochs)
        if distiller.device.type == "cuda":
            torch.cuda.synchronize(distiller.device)
        kdist.barrier()
        seconds = time.perf_counter() - start
        per_rank = -(-len(train) // world)  # the padded share: ceil(n / P)
        results[name] = {
            "seconds": seconds,
            "samples": per_rank * world * args.epochs,
            "samples_per_s": per_rank * world * args.epochs / seconds,
            "train_loss": distiller.history[-1]["train_loss"],
            "device": str(distiller.device),
        }
    if kdist.is_main():
        Path(args.result).write_text(json.dumps({"world_size": world, "workloads": results}))
    kdist.destroy()


# --- the launcher -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, processes: int, result: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "benchmarks.scaling",
        "--worker",
        "--result",
        str(result),
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
        "--workload",
        *args.workload,
    ]
    env = dict(os.environ, KDLIB_PROGRESS="0")
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {processes} process(es) failed:\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling",
        description="Distiller throughput at 1 and N torchrun processes (DDP).",
    )
    parser.add_argument("--device", default="cpu", help="cpu (gloo) | cuda (NCCL) | auto")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs, after 1 warm-up")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", default=None, help="JSON file for every figure")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(p < 1 for p in args.processes) or 1 not in args.processes:
        parser.error("--processes: counts >= 1, including 1 (the reference)")
    for name in ("batch_size", "epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        _worker(args)
        return {}
    runs = {p: [] for p in args.processes}
    summary = {
        "command": "python -m benchmarks.scaling " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "result")},
        "load_average_before": _loadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for p in args.processes:
                out = _launch(args, p, Path(tmp) / f"r{r}-p{p}.json")
                out["load_average"] = _loadavg()
                runs[p].append(out)
                print(f"repeat {r + 1}, {p} process(es): load {out['load_average']}", flush=True)
    summary["load_average_after"] = _loadavg()
    table = {}
    for name in args.workload:
        table[name] = {}
        base = [run["workloads"][name]["samples_per_s"] for run in runs[1]]
        for p in args.processes:
            rates = [run["workloads"][name]["samples_per_s"] for run in runs[p]]
            speedups = [rate / b for rate, b in zip(rates, base)]
            table[name][p] = {
                "samples_per_s": statistics.median(rates),
                "speedup": statistics.median(speedups),
                "efficiency": statistics.median(speedups) / p,
                "each_repeat": rates,
            }
    summary["results"] = table
    summary["runs"] = {str(p): v for p, v in runs.items()}
    print(f"\n{'workload':<12}{'processes':>10}{'samples/s':>12}{'speedup':>10}{'efficiency':>12}")
    for name, rows in table.items():
        for p, row in rows.items():
            print(
                f"{name:<12}{p:>10}{row['samples_per_s']:>12,.0f}{row['speedup']:>10.2f}"
                f"{row['efficiency']:>12.2f}"
            )
    print(
        f"load average: before {summary['load_average_before']}, after "
        f"{summary['load_average_after']}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
