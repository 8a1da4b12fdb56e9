"""Distillation under torchrun: 2 gloo processes on the CPU against one process.

The slow tests start one torchrun job (``python -m torch.distributed.run --nproc_per_node 2``,
MASTER_ADDR=127.0.0.1 and a free port) that runs this file as a script (the ``__main__`` part
below): the same training as in the test process, with half the batch per rank. Each rank
saves its student, adapter and history; the tests compare them with one-process runs.

Tolerance: the two ranks' gradients are averaged by an all-reduce, a different order of float32
additions than one process's batch mean, so the students differ by rounding. Measured here after
8 steps (Adam, lr 1e-2): largest parameter difference 3.0e-8 (student and adapter), losses
within a relative 1.1e-7, the same validation accuracy. ``TOL`` = 1e-5 leaves a factor 300 for
other CPUs' summation orders, and stays far below what it must tell apart: training moved the
parameters by 0.08, and a one-process run with the per-rank batch (what the ranks would compute
without the averaging) ends 0.12 away.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdlib import distributed as kdist
from kdlib import models
from kdlib.data import TensorLoader, load_digits
from kdlib.distill import Distiller
from kdlib.features import HintTerm
from kdlib.runtime import seed_everything

TOL = 1e-5  # largest parameter difference, 2 processes against 1 (see the module docstring)
N_TRAIN, GLOBAL_BATCH, WORLD = 256, 64, 2
ROOT = Path(__file__).resolve().parent.parent


# --- the training runs, shared by the test process and the torchrun ranks -----------------------


def _data():
    digits = load_digits(seed=0)
    return digits.train.x[:N_TRAIN], digits.train.y[:N_TRAIN], digits.val


def _kd_run(batch, epochs, checkpoint=None, resume=False, keep_loader=False):
    """KD with the teacher-logit cache: SmallCNN (random, frozen) -> MLP-32, Adam lr 1e-2."""
    x, y, val = _data()
    seed_everything(0)
    teacher = models.SmallCNN(width=8)
    student = models.MLP(64, (32,), 10)
    distiller = Distiller(student, teacher, lr=1e-2, cache_teacher=True, progress=False)
    loader = TensorLoader(x, y, batch_size=batch, shuffle=True, seed=0, return_index=True)
    distiller.fit(loader, epochs, val_loader=val, checkpoint=checkpoint, resume=resume)
    return (distiller, loader, val) if keep_loader else distiller


def _hint_run(batch, epochs=1):
    """KD plus a FitNets hint through a learned linear adapter (student fc1 -> teacher pool)."""
    x, y, _ = _data()
    seed_everything(0)
    teacher = models.SmallCNN(width=8)
    student = models.MLP(64, (32,), 10)
    hint = HintTerm.from_models(student, teacher, "fc1", "pool", (1, 8, 8), weight=1.0)
    distiller = Distiller(student, teacher, lr=1e-2, terms=[hint], progress=False)
    distiller.fit(TensorLoader(x, y, batch_size=batch, shuffle=True, seed=0), epochs)
    return distiller


def _dataloader_run(epochs=2):
    """``train_supervised``'s loop on a plain shuffling ``DataLoader`` (its sampler replaced)."""
    x, y, val = _data()
    seed_everything(0)
    dataset = torch.utils.data.TensorDataset(x, y)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=GLOBAL_BATCH // WORLD, shuffle=True, generator=generator
    )
    distiller = Distiller(models.MLP(64, (32,), 10), None, lr=1e-2, progress=False)
    distiller.fit(loader, epochs, val_loader=val)
    return distiller


def _worker(out: Path) -> None:
    """One torchrun rank: the runs with the per-rank batch, results saved per rank."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    kd = _kd_run(GLOBAL_BATCH // WORLD, 2, checkpoint=out / f"kd-rank{rank}.pt")
    hint = _hint_run(GLOBAL_BATCH // WORLD)
    plain = _dataloader_run()
    share = plain._data[2]  # the loader this rank trained on
    torch.save(
        {
            "world_size": kd.world_size,
            "student": kd.student.state_dict(),
            "history": kd.history,
            "cache_complete": kd.logit_cache.complete,
            "hint_student": hint.student.state_dict(),
            "hint_adapter": hint.terms[0].state_dict(),
            "hint_history": hint.history,
            "dataloader": {
                "history": plain.history,
                "student": plain.student.state_dict(),
                "batches": len(share),
                "sampler_epoch": share.sampler.epoch,
                "indices": list(share.sampler),
            },
        },
        out / f"rank{rank}.pt",
    )
    kdist.destroy()


# --- helpers ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _strip(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.fixture(scope="module")
def one_process():
    """One process, global batch: the start, the student after 2 epochs, the run after 3."""
    start = _kd_run(GLOBAL_BATCH, 0).student.state_dict()
    distiller, loader, val = _kd_run(GLOBAL_BATCH, 2, keep_loader=True)
    after_two = {k: v.clone() for k, v in distiller.student.state_dict().items()}
    distiller.fit(loader, 3, val_loader=val)  # continues: one uninterrupted run of 3 epochs
    return start, after_two, distiller


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The torchrun job's per-rank results and the folder it wrote."""
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", KDLIB_PROGRESS="0", MASTER_ADDR="127.0.0.1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(Path(__file__)),
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return ranks, out


# --- fast tests, one process ---------------------------------------------------------------------


def test_shards_deal_the_global_batches_out():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [kdist.shard_indices(order, r, 2) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10))  # disjoint, all covered
    for b in range(3):  # batch b of the ranks (2 each) = batch b of one process (4)
        got = torch.cat([s[2 * b : 2 * b + 2] for s in shards]).sort().values
        assert torch.equal(got, order[4 * b : 4 * b + 4].sort().values)
    padded = [kdist.shard_indices(order, r, 3) for r in range(3)]  # 10 -> 12: 2 seen twice
    assert [len(s) for s in padded] == [4, 4, 4]
    assert set(torch.cat(padded).tolist()) == set(range(10))
    assert [len(kdist.shard_indices(order, r, 3, pad=False)) for r in range(3)] == [4, 3, 3]
    with pytest.raises(ValueError, match="index"):
        kdist.shard_indices(order, 2, 2)


def test_tensor_loader_shards_share_one_order():
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    full = TensorLoader(x, y, batch_size=4, shuffle=True, seed=1, return_index=True)
    parts = [
        TensorLoader(x, y, batch_size=2, shuffle=True, seed=1, return_index=True).shard(r, 2)
        for r in range(2)
    ]
    assert [len(p) for p in parts] == [3, 3] and len(full) == 3
    for whole, a, b in zip(full, *parts):
        assert torch.equal(torch.cat([a[2], b[2]]).sort().values, whole[2].sort().values)
        assert torch.equal(a[0][:, 0].long(), a[2])  # inputs follow the indices
    with pytest.raises(ValueError, match="shard index"):
        full.shard(2, 2)


def test_dataloader_gets_a_distributed_sampler():
    dataset = torch.utils.data.TensorDataset(torch.zeros(10, 1), torch.zeros(10))
    generator = torch.Generator().manual_seed(7)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, shuffle=True, generator=generator)
    share = kdist.shard_loader(loader, 1, 2)
    assert isinstance(share.sampler, torch.utils.data.DistributedSampler)
    assert share.sampler.rank == 1 and share.sampler.seed == 7 and share.sampler.shuffle
    assert len(share) == 3
    evaluation = kdist.shard_loader(loader, 1, 2, train=False)
    assert list(evaluation.sampler) == [1, 3, 5, 7, 9]
    assert kdist.shard_loader(share, 1, 2) is share
    with pytest.raises(ValueError, match="TensorLoader or a torch DataLoader"):
        kdist.shard_loader([(torch.zeros(1), torch.zeros(1))], 0, 2)


def test_one_process_stays_one_process():
    assert not kdist.is_initialized()
    assert (kdist.rank(), kdist.world_size(), kdist.is_main()) == (0, 1, True)
    assert kdist.all_reduce_mean({"a": 2.0}, weight=3) == {"a": 2.0}
    student = models.MLP(64, (8,), 10)
    distiller = Distiller(student, None, progress=False, device="cpu")
    assert distiller.world_size == 1 and distiller._train_student is student
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        Distiller(student, None, progress=False, distributed=True)
    with pytest.raises(ValueError, match="distributed must be"):
        Distiller(student, None, progress=False, distributed="yes")


# --- 2 processes against 1 ---------------------------------------------------------------------


@pytest.mark.slow
def test_two_ranks_train_the_one_process_student(two_ranks, one_process):
    ranks, _ = two_ranks
    start, after_two, one = one_process
    assert [r["world_size"] for r in ranks] == [WORLD, WORLD]
    # DDP keeps the ranks identical: the same averaged gradients, bit for bit
    assert _max_diff(ranks[0]["student"], ranks[1]["student"]) == 0.0
    assert _strip(ranks[0]["history"]) == _strip(ranks[1]["history"])  # averaged over ranks
    assert all(r["cache_complete"] for r in ranks)  # the shards' caches were merged

    per_rank_batch = _kd_run(GLOBAL_BATCH // WORLD, 2).student.state_dict()
    assert _max_diff(ranks[0]["student"], after_two) < TOL
    assert _max_diff(start, after_two) > 1000 * TOL  # training moved it
    assert _max_diff(per_rank_batch, after_two) > 1000 * TOL  # no averaging: another student
    for a, b in zip(ranks[0]["history"], one.history[:2]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_soft"] == pytest.approx(b["train_soft"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)  # all of val, summed
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1.5 / 397)


@pytest.mark.slow
def test_adapter_is_trained_in_sync(two_ranks):
    ranks, _ = two_ranks
    assert _max_diff(ranks[0]["hint_adapter"], ranks[1]["hint_adapter"]) == 0.0
    one = _hint_run(GLOBAL_BATCH)
    start = _hint_run(GLOBAL_BATCH, epochs=0)
    adapter = one.terms[0].state_dict()
    assert _max_diff(ranks[0]["hint_adapter"], adapter) < TOL
    assert _max_diff(start.terms[0].state_dict(), adapter) > 1000 * TOL
    assert _max_diff(ranks[0]["hint_student"], one.student.state_dict()) < TOL
    assert ranks[0]["hint_history"][0]["train_hint"] == pytest.approx(
        one.history[0]["train_hint"], rel=1e-5
    )


@pytest.mark.slow
def test_dataloader_is_dealt_out_by_a_distributed_sampler(two_ranks):
    ranks, _ = two_ranks
    runs = [r["dataloader"] for r in ranks]
    assert [r["batches"] for r in runs] == [N_TRAIN // GLOBAL_BATCH] * 2  # half the data each
    assert [r["sampler_epoch"] for r in runs] == [1, 1]  # set_epoch(1) for the second epoch
    assert not set(runs[0]["indices"]) & set(runs[1]["indices"])  # disjoint halves
    assert _max_diff(runs[0]["student"], runs[1]["student"]) == 0.0
    assert _strip(runs[0]["history"]) == _strip(runs[1]["history"])
    assert runs[0]["history"][1]["train_loss"] < runs[0]["history"][0]["train_loss"]


@pytest.mark.slow
def test_rank_0_writes_and_one_process_resumes(two_ranks, one_process, tmp_path):
    ranks, out = two_ranks
    straight = one_process[2]  # 1 process throughout
    assert (out / "kd-rank0.pt").exists()
    assert not (out / "kd-rank1.pt").exists()  # rank 1 was given its own path: never written
    checkpoint = tmp_path / "kd.pt"
    checkpoint.write_bytes((out / "kd-rank0.pt").read_bytes())
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["student"])

    resumed = _kd_run(GLOBAL_BATCH, 3, checkpoint=checkpoint, resume=True)  # 2 ranks, then 1
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert _strip(resumed.history[:2]) == _strip(ranks[0]["history"])
    assert _max_diff(resumed.student.state_dict(), straight.student.state_dict()) < TOL
    assert resumed.history[2]["train_loss"] == pytest.approx(
        straight.history[2]["train_loss"], rel=1e-5
    )


if __name__ == "__main__":  # one rank of the torchrun job of the fixture `two_ranks`
    _worker(Path(sys.argv[1]))
