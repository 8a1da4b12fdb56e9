"""Distil on the digits with several processes: DistributedDataParallel under ``torchrun``.

One machine, N processes (one per GPU with CUDA and NCCL; on the CPU gloo, one process per
share of the cores)::

    torchrun --nproc_per_node 2 -m kdlib.examples.ddp --epochs 10

Several machines (run the same command on each, ``--node-rank`` 0 .. nnodes-1 not needed with
the c10d rendezvous; ``HOST:PORT`` is one of the machines, reachable from all)::

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 --rdzv-id digits-kd -m kdlib.examples.ddp

Without torchrun, ``python -m kdlib.examples.ddp`` trains the same way in one process. The
script is the single-process one: the Distiller and ``train_supervised`` find the process group
(``kdlib.distributed.init_from_env`` starts it from torchrun's variables), wrap the student in
DistributedDataParallel, deal each epoch's batches out between the ranks (``--batch-size`` is
per process: the global batch is N times it), average losses and metrics over the ranks, and
print and checkpoint on rank 0. ``--checkpoint F --resume`` continues a run on any number of
processes (the trained teacher is kept beside ``F``, so the resumed run distils the same one).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from kdlib import distributed as kdist
from kdlib.data import load_digits
from kdlib.distill import Distiller, train_supervised
from kdlib.metrics import evaluate
from kdlib.models import MLP, SmallCNN
from kdlib.runtime import pick_device, seed_everything


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kdlib.examples.ddp",
        description="Distil a SmallCNN teacher into an MLP student on the digits, on one or "
        "several processes (start it with torchrun for several).",
    )
    parser.add_argument("--epochs", type=int, default=10, help="distillation epochs")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="teacher epochs")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the hard term")
    parser.add_argument("--seed", type=int, default=0, help="the same on every rank")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--cache-teacher", action="store_true", help="teacher logits once")
    parser.add_argument("--checkpoint", default=None, help="write after each epoch (rank 0)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per process (0: default)"
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "teacher_epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.resume and not args.checkpoint:
        parser.error("--resume needs --checkpoint")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    # NCCL on CUDA, gloo on the CPU; nothing happens without torchrun
    kdist.init_from_env("nccl" if device.type == "cuda" else "gloo")
    world, main_rank = kdist.world_size(), kdist.is_main()
    say = print if main_rank else (lambda *a, **k: None)
    backend = torch.distributed.get_backend() if kdist.is_initialized() else "none"
    say(
        f"{world} process(es), backend {backend}, device {kdist.local_device(device)} on rank "
        f"0; batch {args.batch_size} per process, {args.batch_size * world} in all"
    )

    seed_everything(args.seed)  # the same initial weights and data order on every rank
    digits = load_digits(seed=args.seed)
    train = digits.train

    teacher = SmallCNN(in_channels=1, num_classes=10, width=32, depth=2)
    # the teacher is saved beside the checkpoint, so that a resumed run distils the same one;
    # rank 0 reads it and sends it to the others (the file is on rank 0's machine)
    teacher_file = Path(args.checkpoint).with_suffix(".teacher.pt") if args.checkpoint else None
    state = None
    if args.resume and kdist.is_main() and teacher_file.exists():
        state = torch.load(teacher_file, map_location="cpu", weights_only=True)
    state = kdist.broadcast_object(state)
    if state is not None:
        teacher.load_state_dict(state)
        say(f"teacher: read from {teacher_file}")
    else:
        train_supervised(
            teacher,
            train.loader(args.batch_size, shuffle=True, seed=args.seed),
            epochs=args.teacher_epochs,
            lr=args.lr,
            device=device,
            progress=False,
        )
        if teacher_file is not None and kdist.is_main():
            teacher_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(teacher.state_dict(), teacher_file)
    student = MLP(64, (32,), 10)
    distiller = Distiller(
        student,
        teacher,
        temperature=args.temperature,
        alpha=args.alpha,
        lr=args.lr,
        device=device,
        cache_teacher=args.cache_teacher,
    )
    teacher_test = evaluate(teacher, digits.test)  # the whole test set, on every rank
    history = distiller.fit(
        train.loader(args.batch_size, shuffle=True, seed=args.seed, return_index=True),
        epochs=args.epochs,
        val_loader=digits.val,
        checkpoint=args.checkpoint,
        resume=args.resume,
    )
    for record in history:
        say(
            f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f}  "
            f"val accuracy {record['val_accuracy']:.4f}  {record['seconds']:.2f} s"
        )
    distiller_eval = distiller.evaluate(digits.test)
    say(
        f"test accuracy: teacher {teacher_test['accuracy']:.4f}, "
        f"student {distiller_eval['accuracy']:.4f}"
    )
    kdist.destroy()
    return {"teacher": teacher_test, "student": distiller_eval, "history": history}


if __name__ == "__main__":
    os.environ.setdefault("KDLIB_PROGRESS", "0")  # epoch lines instead of a bar in logs
    main()
