"""Teacher and student as they would ship: eager PyTorch against ONNX Runtime, float32 and int8.

    python -m benchmarks.export                      # about a minute on one CPU core
    python -m benchmarks.export --tiny               # seconds: what a smoke test runs
    python -m benchmarks.export --repeats 9 --out benchmarks/runs/export-cpu.json

The course's digits pair: the ``SmallCNN(width=32, depth=3)`` teacher trained on the labels,
and the ``ViT`` student (patch 4, width 32, 2 blocks) distilled from it with soft KD through the
class token (notebook 11). Each is then measured three ways: eager PyTorch, ONNX Runtime float32
(``kdlib.export.export_onnx`` + ``OnnxModel``) and ONNX Runtime int8 (``quantize_int8``, static,
calibrated on the validation split). Figures per row: test accuracy, model bytes (parameters
and buffers for PyTorch, the file for ONNX), batch-1 latency (median, ms) and batch-256
throughput (samples/s), all on one thread (``torch.set_num_threads(1)``, ONNX Runtime's
``intra_op_num_threads=1``).

Timing: ``--repeats`` rounds; each round times every row once, in an order rotated from round
to round (a busy spell of a shared machine hits every row alike), and each figure is the median
over the rounds. Ratios refer to the eager teacher. The load average is stored with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from kdlib.data import load_digits, random_shift
from kdlib.distill import Distiller, train_supervised
from kdlib.efficiency import measure_latency, throughput
from kdlib.export import OnnxModel, export_onnx, missing_dependencies, quantize_int8
from kdlib.metrics import evaluate
from kdlib.models import SmallCNN, count_parameters, model_size_bytes
from kdlib.runtime import seed_everything
from kdlib.vit import ViT

RUNTIMES = ("PyTorch eager", "ONNX Runtime float32", "ONNX Runtime int8")


def train_pair(epochs: int):
    """The teacher (labels, one-pixel shifts) and the ViT student distilled from it."""
    digits = load_digits()
    seed_everything(0)
    teacher = SmallCNN(1, 10, width=32, depth=3, image_size=8)
    loader = digits.train.loader(64, shuffle=True, seed=0, transform=random_shift)
    train_supervised(teacher, loader, epochs, lr=3e-3, device="cpu", progress=False)
    seed_everything(0)
    student = ViT(image_size=8, patch_size=4, dim=32, depth=2, heads=4)
    Distiller(
        student, teacher, temperature=4.0, alpha=0.5, lr=5e-3, device="cpu", progress=False
    ).fit(digits.train.loader(64, shuffle=True, seed=0), epochs)
    return digits, teacher.eval(), student.eval()


def measure(epochs: int, repeats: int, latency_repeats: int, folder: Path) -> dict:
    digits, teacher, student = train_pair(epochs)
    rows = {}
    for who, model in (("teacher", teacher), ("student", student)):
        path = export_onnx(model, digits.val.x[:1], folder / f"{who}.onnx", dynamo=False)
        int8 = quantize_int8(path, folder / f"{who}.int8.onnx", calibration=digits.val)
        runtimes = (model, OnnxModel(path), OnnxModel(int8))
        for how, runnable in zip(RUNTIMES, runtimes):
            rows[who, how] = {
                "model": runnable,
                "parameters": count_parameters(model),
                "accuracy": evaluate(runnable, digits.test, "cpu")["accuracy"],
                "bytes": model_size_bytes(model) if runnable is model else runnable.size_bytes,
                "latency": [],
                "throughput": [],
            }
    order = list(rows)
    shape = digits.input_shape
    for r in range(repeats):
        k = r % len(order)
        for key in order[k:] + order[:k]:
            row = rows[key]
            row["latency"].append(
                1e3 * measure_latency(row["model"], shape, 1, latency_repeats, 5, "cpu")
            )
            row["throughput"].append(throughput(row["model"], shape, 256, 3, 1, "cpu"))
    base = rows["teacher", "PyTorch eager"]
    base_latency = statistics.median(base["latency"])
    base_rate = statistics.median(base["throughput"])
    out = []
    for (who, how), row in rows.items():
        latency, rate = statistics.median(row["latency"]), statistics.median(row["throughput"])
        out.append(
            {
                "model": who,
                "runtime": how,
                "parameters": row["parameters"],
                "accuracy": row["accuracy"],
                "bytes": row["bytes"],
                "latency_ms": latency,
                "throughput": rate,
                "bytes_ratio": row["bytes"] / base["bytes"],
                "latency_ratio": latency / base_latency,
                "throughput_ratio": rate / base_rate,
            }
        )
    return {"rows": out, "epochs": epochs, "repeats": repeats}


def table(rows: list[dict]) -> str:
    head = (
        f"{'model':8s} {'runtime':21s} {'accuracy':>8s} {'bytes':>9s} {'x bytes':>8s} "
        f"{'latency ms':>10s} {'x latency':>9s} {'samples/s':>10s} {'x thrpt':>8s}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['model']:8s} {r['runtime']:21s} {r['accuracy']:8.1%} {r['bytes']:9,} "
            f"{r['bytes_ratio']:8.2f} {r['latency_ms']:10.3f} {r['latency_ratio']:9.2f} "
            f"{r['throughput']:10,.0f} {r['throughput_ratio']:8.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of both models")
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds (median)")
    parser.add_argument("--tiny", action="store_true", help="1 epoch, 2 rounds: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")
    missing = missing_dependencies()
    if missing:
        print(
            f"skipped: the export extra is missing ({', '.join(missing)}); "
            f'pip install "kdlib[export]"'
        )
        return {"skipped": missing}
    epochs, repeats, latency_repeats = (1, 2, 5) if args.tiny else (args.epochs, args.repeats, 50)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(epochs, repeats, latency_repeats, Path(tmp))
    finally:
        torch.set_num_threads(threads)
    result.update(
        {
            "threads": 1,
            "load_average": os.getloadavg(),
            "machine": platform.platform(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }
    )
    print(table(result["rows"]))
    print(f"load average {result['load_average'][0]:.2f}; ratios refer to the eager teacher")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
