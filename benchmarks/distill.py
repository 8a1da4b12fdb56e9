"""Distillation throughput: a plain PyTorch loop against kdlib's Distiller, side by side.

    python -m benchmarks.distill                          # CPU (or --device cuda), both workloads
    python -m benchmarks.distill --tiny                   # seconds: the test's size
    python -m benchmarks.distill --device cuda --workload all --out gpu.json

Every variant trains the same student from the same initial weights, distilling the same frozen
teacher, on the same data, with the same batch size, optimiser (Adam, lr 1e-3) and loss
(tau = 4, alpha = 0.7 on the hard term), in one process:

    a_dataloader  the plain loop over ``DataLoader(TensorDataset(x, y), shuffle=True)``: what a
                  user writes first
    a             the plain loop over kdlib's ``TensorLoader`` with the data on the device: the
                  reference every ratio is taken against (the loop itself, apples to apples)
    b             ``kdlib.distill.Distiller`` doing the same work
    b_host        (CUDA only) b given the data on the host, as users often do: the Distiller
                  copies a ``TensorLoader``'s tensors to the device once
    c             ``Distiller(cache_teacher=True)``: no augmentation, so the teacher's logits are
                  computed once per sample (in the first epoch) and reused every epoch
    d             (CUDA only) ``Distiller(amp=True, channels_last=True)``: bf16 autocast
    e             (CUDA only) c and d together

The plain loop is the minimal PyTorch example most tutorials show (``distillation_loss`` of
notebook 02, section 2) in the obvious loop::

    for x, y in loader:
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = distillation_loss(student(x), teacher_logits, y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

Timing: each repeat builds a fresh run of every variant and trains them round-robin, one epoch
each in turn (the order rotated from one repeat to the next and reversed every other epoch), so
a slow spell of the shared machine hits every variant alike. Each epoch is timed (on CUDA
between ``torch.cuda.synchronize`` calls), in wall-clock and in process CPU seconds. The first
epoch is warm-up (allocator, cuDNN, Adam's state; for c and e it also fills the cache) and is
left out of ``samples_per_s``, the median over repeats of ``n_train * (epochs - 1) / time``;
``run_samples_per_s`` counts every epoch, the first included. ``ratio_to_a`` is the median, over
repeats and timed epochs, of the time ``a`` took for that epoch over the time the variant took
for it in the same round; ``run_ratio_to_a`` the median over repeats of the same for whole runs;
``best_ratio_to_a`` the fastest timed epoch of ``a`` over the variant's fastest.
On CPU, ``cpu_samples_per_s`` and ``cpu_ratio_to_a`` are the same from process CPU time, which
other processes on the machine disturb less than wall-clock time.

Peak memory, measured afterwards for each variant alone over two epochs (the timed runs are
interleaved, so their peaks would mix): on CUDA ``torch.cuda.max_memory_allocated`` less what
was allocated before (the data and the models); on CPU the rise of the process's peak resident
set (``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) over its resident
set before the run; ``None`` where Linux's ``/proc`` is not there.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import TensorLoader, load_digits
from kdlib.distill import Distiller
from kdlib.models import MLP, SmallCNN, count_parameters, resnet8x4, resnet32x4
from kdlib.runtime import pick_device

VARIANTS = {
    "a_dataloader": "plain loop, torch DataLoader(TensorDataset)",
    "a": "plain loop, TensorLoader, data on the device",
    "b": "kdlib Distiller",
    "b_host": "kdlib Distiller, data on the host: kdlib copies it to the device (CUDA)",
    "c": "kdlib Distiller, cache_teacher=True",
    "d": "kdlib Distiller, bf16 autocast + channels_last (CUDA)",
    "e": "kdlib Distiller, cache + bf16 + channels_last (CUDA)",
}
CUDA_ONLY = ("b_host", "d", "e")


def distillation_loss(student_logits, teacher_logits, labels, T=4.0, alpha=0.7):
    """The course's minimal example, verbatim: ``alpha * CE + (1 - alpha) * T^2 * KL``."""
    hard_loss = F.cross_entropy(student_logits, labels)

    soft_student = F.log_softmax(student_logits / T, dim=1)
    soft_teacher = F.softmax(teacher_logits / T, dim=1)

    soft_loss = F.kl_div(soft_student, soft_teacher, reduction="batchmean") * (T * T)

    return alpha * hard_loss + (1 - alpha) * soft_loss


# --- workloads --------------------------------------------------------------------------------


@dataclass
class Workload:
    """A teacher, a student and a training set ``x`` ``(N, ...)``, ``y`` ``(N,)`` on the CPU."""

    name: str
    teacher: nn.Module
    student: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    batch_size: int
    epochs: int
    repeats: int
    note: str

    def describe(self) -> dict:
        return {
            "teacher": f"{type(self.teacher).__name__} ({count_parameters(self.teacher):,} params)",
            "student": f"{type(self.student).__name__} ({count_parameters(self.student):,} params)",
            "n_train": len(self.y),
            "input_shape": list(self.x.shape[1:]),
            "num_classes": self.num_classes,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "repeats": self.repeats,
            "note": self.note,
        }


def digits_workload(device: torch.device, tiny: bool) -> Workload:
    """The course's digits pair: SmallCNN teacher (width 32, depth 2), MLP-32 student."""
    torch.manual_seed(0)
    train = load_digits().train
    n = 128 if tiny else len(train)
    return Workload(
        name="digits",
        teacher=SmallCNN(in_channels=1, num_classes=10, width=32, depth=2),
        student=MLP(64, (32,), 10),
        x=train.x[:n],
        y=train.y[:n],
        num_classes=10,
        batch_size=64,
        epochs=2 if tiny else 6,
        repeats=1 if tiny else 9,
        note="digits training split (8x8 grey, 10 classes); untrained teacher weights "
        "(throughput does not depend on them)",
    )


def cifar_workload(device: torch.device, tiny: bool) -> Workload:
    """CIFAR-100-shaped: resnet32x4 teacher, resnet8x4 student, fixed random 3x32x32 inputs."""
    torch.manual_seed(0)
    if tiny:
        n, batch, epochs, repeats = 2, 2, 2, 1
        note = "tiny size for the test: one step of 2 images an epoch"
    elif device.type == "cuda":
        n, batch, epochs, repeats = 10_000, 64, 3, 3
        note = "10,000 random-but-fixed inputs"
    else:
        n, batch, epochs, repeats = 32, 8, 3, 5
        note = (
            "CPU: 32 random-but-fixed inputs in batches of 8 (4 steps an epoch): a resnet32x4 "
            "forward pass of 64 images takes seconds on one core"
        )
    gen = torch.Generator().manual_seed(0)
    return Workload(
        name="cifar",
        teacher=resnet32x4(num_classes=100),
        student=resnet8x4(num_classes=100),
        x=torch.randn(n, 3, 32, 32, generator=gen),
        y=torch.randint(0, 100, (n,), generator=gen),
        num_classes=100,
        batch_size=batch,
        epochs=epochs,
        repeats=repeats,
        note=note,
    )


WORKLOADS: dict[str, Callable[[torch.device, bool], Workload]] = {
    "digits": digits_workload,
    "cifar": cifar_workload,
}


# --- measuring --------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


class PeakMemory:
    """Peak memory of what runs between ``start()`` and ``stop()``, in bytes (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0
        self.ok = True

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:  # give freed heap memory back, then reset the peak resident set to the current one
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.ok = False
        rss = _proc_kib("VmRSS")
        self.ok = self.ok and rss is not None
        self.base = (rss or 0) * 1024

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        peak = _proc_kib("VmHWM")
        if not self.ok or peak is None:
            return None
        return max(peak * 1024 - self.base, 0)


class EpochTimer:
    """Wall-clock and process CPU seconds of each epoch (CUDA: between synchronisations)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self):
        _sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)


class PlainRun:
    """The plain PyTorch loop, one :meth:`epoch` at a time."""

    def __init__(self, w: Workload, device: torch.device, loader):
        self.device, self.loader = device, loader
        self.teacher = copy.deepcopy(w.teacher).to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = copy.deepcopy(w.student).to(device).train()
        self.optimizer = torch.optim.Adam(self.student.parameters(), lr=1e-3)
        self.timer = EpochTimer(device)

    def epoch(self) -> None:
        teacher, student, optimizer, device = (
            self.teacher,
            self.student,
            self.optimizer,
            self.device,
        )
        with self.timer:
            for batch in self.loader:
                x = batch[0].to(device, non_blocking=True)
                y = batch[1].to(device, non_blocking=True)
                with torch.no_grad():
                    teacher_logits = teacher(x)
                student_logits = student(x)
                loss = distillation_loss(student_logits, teacher_logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()


class KdlibRun:
    """kdlib's Distiller (tau = 4, alpha = 0.7, Adam lr 1e-3), one :meth:`epoch` at a time."""

    def __init__(self, w: Workload, device: torch.device, loader, **options):
        self.loader = loader
        self.distiller = Distiller(
            copy.deepcopy(w.student).to(device),
            copy.deepcopy(w.teacher).to(device),
            temperature=4.0,
            alpha=0.7,
            lr=1e-3,
            device=device,
            progress=False,
            **options,
        )
        self.student = self.distiller.student
        self.timer = EpochTimer(device)

    def epoch(self) -> None:
        with self.timer:  # fit counts epochs in total: this is one more
            self.distiller.fit(self.loader, epochs=self.distiller.epoch + 1)


OPTIONS = {
    "b": {},
    "b_host": {},
    "c": {"cache_teacher": True},
    "d": {"amp": True, "channels_last": True},
    "e": {"amp": True, "channels_last": True, "cache_teacher": True},
}


def make_run(name: str, w: Workload, device: torch.device, x_dev, y_dev):
    """A fresh run of variant ``name``: models copied from ``w``'s, so every variant starts
    from the same weights; the loaders shuffle with the same seed."""
    if name == "a_dataloader":
        dataset = torch.utils.data.TensorDataset(w.x, w.y)
        generator = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=w.batch_size, shuffle=True, generator=generator
        )
        return PlainRun(w, device, loader)
    x, y = (w.x, w.y) if name == "b_host" else (x_dev, y_dev)
    loader = TensorLoader(x, y, w.batch_size, shuffle=True, seed=0, return_index=name in ("c", "e"))
    if name == "a":
        return PlainRun(w, device, loader)
    return KdlibRun(w, device, loader, **OPTIONS[name])


def _same_work(w: Workload, reference: nn.Module, other: nn.Module) -> dict:
    """How far ``other`` ended from ``reference``, both trained from ``w.student``.

    ``relative_output_diff``: ``||f_other(x) - f_ref(x)|| / ||f_ref(x) - f_start(x)||``, the
    students' logits (eval mode) on up to 256 training inputs. Rounding alone gives 1e-6 to
    2e-3 here; distilling at tau = 2 instead of 4 gives 5e-3 (digits, 4 steps) to 0.25
    (cifar). The weights themselves (``max_abs_param_diff``, ``relative_param_diff``, L2 over
    all parameters) drift further apart: Adam moves a weight whose gradient is about zero by
    about lr either way, whichever way the rounding tips it.
    """
    x = w.x[:256]
    logits = []
    for model in (w.student, reference, other):
        model = copy.deepcopy(model).cpu().float().eval()
        with torch.no_grad():
            logits.append(model(x))
    start_out, ref_out, other_out = logits
    flat = lambda m: torch.cat([p.detach().float().cpu().flatten() for p in m.parameters()])
    s, r, o = flat(w.student), flat(reference), flat(other)
    return {
        "relative_output_diff": (
            (other_out - ref_out).norm() / (ref_out - start_out).norm().clamp_min(1e-12)
        ).item(),
        "max_abs_param_diff": (o - r).abs().max().item(),
        "relative_param_diff": ((o - r).norm() / (r - s).norm().clamp_min(1e-12)).item(),
    }


def _throughput(n: int, seconds: list[float]) -> float:
    return n * len(seconds) / max(sum(seconds), 1e-9)


def peak_memory(name: str, w: Workload, device: torch.device, x_dev, y_dev) -> int | None:
    """Peak memory of two epochs of variant ``name``, run alone (timed runs are interleaved)."""
    run = make_run(name, w, device, x_dev, y_dev)
    memory = PeakMemory(device)
    memory.start()
    run.epoch()
    run.epoch()
    peak = memory.stop()
    del run
    return peak


def benchmark_workload(w: Workload, device: torch.device, log=print) -> dict:
    """Time every variant of ``w``, interleaved epoch by epoch, ``w.repeats`` times; then
    measure each one's peak memory alone. Returns the figures (see the module docstring)."""
    names = [v for v in VARIANTS if device.type == "cuda" or v not in CUDA_ONLY]
    x_dev, y_dev = w.x.to(device), w.y.to(device)  # "data on the device when it fits"
    n = len(w.y)
    timers: dict[str, list[EpochTimer]] = {v: [] for v in names}
    same_work: dict[str, dict] = {}
    for r in range(w.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # each repeat starts elsewhere
        runs = {v: make_run(v, w, device, x_dev, y_dev) for v in order}
        for epoch in range(w.epochs):  # round-robin: a slow spell of the machine hits them all
            for v in order if epoch % 2 == 0 else order[::-1]:
                runs[v].epoch()
        for v in order:
            timers[v].append(runs[v].timer)
            log(
                f"  {w.name:6s} repeat {r + 1}/{w.repeats} {v:12s} "
                f"{_throughput(n, runs[v].timer.wall[1:] or runs[v].timer.wall):10.0f} "
                "samples/s   epochs (s): " + " ".join(f"{t:.3f}" for t in runs[v].timer.wall)
            )
        if r == 0:  # every variant trained the same student on the same batches: compare
            for v in names:
                if v not in ("a", "a_dataloader"):  # the DataLoader shuffles differently
                    same_work[f"{v}_vs_a"] = _same_work(w, runs["a"].student, runs[v].student)
        del runs

    steady = slice(1, None) if w.epochs > 1 else slice(None)  # epoch 1 is the warm-up

    def paired_ratio(v: str, kind: str) -> float:
        """Median over repeats and timed epochs of time(a) / time(v) in the same round."""
        ratios = []
        for tv, ta in zip(timers[v], timers["a"]):
            ratios += [a / b for a, b in zip(getattr(ta, kind)[steady], getattr(tv, kind)[steady])]
        return statistics.median(ratios)

    def best_ratio(v: str) -> float:
        """Fastest timed epoch of ``a`` over the variant's fastest: what the code costs when
        nothing else gets in the way (interference only ever adds time)."""
        fastest = lambda ts: min(x for t in ts for x in t.wall[steady])
        return fastest(timers["a"]) / fastest(timers[v])

    def whole_run_ratio(v: str) -> float:
        return statistics.median(
            sum(ta.wall) / sum(tv.wall) for tv, ta in zip(timers[v], timers["a"])
        )

    figures = {}
    on_cpu = device.type == "cpu"
    for v in names:
        peak = peak_memory(v, w, device, x_dev, y_dev)
        figures[v] = {
            "label": VARIANTS[v],
            "samples_per_s": statistics.median(_throughput(n, t.wall[steady]) for t in timers[v]),
            "ratio_to_a": paired_ratio(v, "wall"),
            "best_ratio_to_a": best_ratio(v),
            "run_samples_per_s": statistics.median(_throughput(n, t.wall) for t in timers[v]),
            "run_ratio_to_a": whole_run_ratio(v),
            "cpu_samples_per_s": (
                statistics.median(_throughput(n, t.cpu[steady]) for t in timers[v])
                if on_cpu
                else None
            ),
            "cpu_ratio_to_a": paired_ratio(v, "cpu") if on_cpu else None,
            "peak_memory_bytes": peak,
            "epoch_seconds": [[round(x, 4) for x in t.wall] for t in timers[v]],
        }
        shown = "n/a" if peak is None else f"{peak / 2**20:.1f} MiB"
        log(f"  {w.name:6s} peak memory {v:12s} {shown}")
    return {**w.describe(), "variants": figures, "same_work": same_work}


# --- the command ------------------------------------------------------------------------------


def machine_info(device: torch.device, threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _table(results: dict) -> str:
    lines = [
        f"{'workload':8s} {'variant':12s} {'samples/s':>10s} {'ratio to a':>10s} {'best':>6s} "
        f"{'whole run':>9s} {'CPU-time':>8s} {'peak MiB':>9s}  description"
    ]
    for wname, wres in results["workloads"].items():
        for v, f in wres.get("variants", {}).items():
            peak, cpu = f["peak_memory_bytes"], f["cpu_ratio_to_a"]
            peak_s = f"{peak / 2**20:9.1f}" if peak is not None else f"{'n/a':>9s}"
            cpu_s = f"{cpu:8.3f}" if cpu is not None else f"{'n/a':>8s}"
            lines.append(
                f"{wname:8s} {v:12s} {f['samples_per_s']:10.0f} {f['ratio_to_a']:10.3f} "
                f"{f['best_ratio_to_a']:6.3f} "
                f"{f['run_ratio_to_a']:9.3f} {cpu_s} {peak_s}  {f['label']}"
            )
    return "\n".join(lines)


TARGETS = (  # (workload, variant, minimum ratio to a)
    ("digits", "b", 1.0),  # the Distiller at least as fast as the plain loop
    ("digits", "c", 3.0),  # the teacher-logit cache pays
    ("cifar", "c", 1.3),
)


def _targets(results: dict) -> dict:
    out = {}
    for wname, v, minimum in TARGETS:
        variants = results["workloads"].get(wname, {}).get("variants", {})
        if v in variants:
            ratio = variants[v]["ratio_to_a"]
            out[f"{wname}_{v}_over_a"] = {
                "ratio": ratio,
                "minimum": minimum,
                "met": ratio >= minimum,
            }
    return out


def run(args, save: Callable[[dict], None] = lambda results: None) -> dict:
    """Benchmark the workloads ``args`` names; ``save(results)`` after each one, so a run cut
    short still leaves the finished workloads behind. A workload that fails (a missing package,
    say) is recorded as ``{"error": ...}`` and the others still run."""
    device = pick_device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    results = {
        "machine": machine_info(device, torch.get_num_threads()),
        "command": " ".join(["python -m benchmarks.distill"] + sys.argv[1:]),
        "tiny": bool(args.tiny),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "workloads": {},
    }
    start = time.perf_counter()
    for name in names:
        try:
            w = WORKLOADS[name](device, args.tiny)
            w.repeats = args.repeats or w.repeats
            w.epochs = args.epochs or w.epochs
            print(f"{name}: {w.describe()}", flush=True)
            results["workloads"][name] = benchmark_workload(
                w, device, log=lambda line: print(line, flush=True)
            )
        except Exception as err:  # recorded; the exit status says so
            traceback.print_exc()
            results["workloads"][name] = {"error": f"{type(err).__name__}: {err}"}
        results["seconds"] = time.perf_counter() - start
        results["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        results["targets"] = _targets(results)
        save(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--workload", default="all", choices=[*WORKLOADS, "all"])
    parser.add_argument("--tiny", action="store_true", help="a few seconds, for the test")
    parser.add_argument("--repeats", type=int, default=None, help="override the workload's")
    parser.add_argument("--epochs", type=int, default=None, help="override (first is warm-up)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: steadier on a shared machine; 0 keeps torch's)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")

    def save(results: dict) -> None:
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2) + "\n")

    results = run(args, save)
    print(_table(results))
    for key, t in results["targets"].items():
        verdict = "met" if t["met"] else "NOT met"
        print(f"target {key}: {t['ratio']:.3f} (minimum {t['minimum']}) {verdict}")
    if args.out:
        print(f"results written to {args.out}")
    failed = [name for name, w in results["workloads"].items() if "error" in w]
    for name in failed:
        print(f"workload {name} failed: {results['workloads'][name]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
