"""Deep mutual learning: the loss by hand, peers detached, every participant trained."""

import copy
import math

import pytest
import torch

from kdlib.data import TensorLoader, load_digits
from kdlib.distill import train_supervised
from kdlib.losses import IGNORE_INDEX
from kdlib.models import MLP, SmallCNN
from kdlib.online import dml_losses, mutual_learning
from kdlib.runtime import seed_everything


def _logits(k=3, n=4, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = [torch.randn(n, c, generator=g) * 2 for _ in range(k)]
    y = torch.randint(0, c, (n,), generator=g)
    return zs, y


def _kl_by_hand(zt, zs, tau):
    """tau^2 * KL(softmax(zt / tau) || softmax(zs / tau)), averaged over rows, with loops."""
    total = 0.0
    for rt, rs in zip(zt.tolist(), zs.tolist()):
        et = [math.exp(v / tau) for v in rt]
        es = [math.exp(v / tau) for v in rs]
        pt = [v / sum(et) for v in et]
        ps = [v / sum(es) for v in es]
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    return tau * tau * total / len(zt)


def _ce_by_hand(z, y):
    total = 0.0
    for row, label in zip(z.tolist(), y.tolist()):
        e = [math.exp(v) for v in row]
        total += -math.log(e[label] / sum(e))
    return total / len(y)


@pytest.mark.parametrize("tau, alpha", [(1.0, 0.5), (3.0, 0.2), (2.0, 1.0), (1.0, 0.0)])
def test_dml_loss_by_hand(tau, alpha):
    zs, y = _logits(k=3)
    losses = dml_losses(zs, y, tau, alpha)
    assert len(losses) == 3
    for i in range(3):
        peers = [_kl_by_hand(zs[j], zs[i], tau) for j in range(3) if j != i]
        expected = alpha * _ce_by_hand(zs[i], y) + (1 - alpha) * sum(peers) / len(peers)
        assert losses[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_identical_participants_have_no_soft_loss_and_unlabelled_rows_skip_ce():
    zs, y = _logits(k=2)
    totals, hards, softs = dml_losses([zs[0], zs[0].clone()], y, 2.0, 0.5, return_parts=True)
    assert softs[0].item() == 0.0 and softs[1].item() == 0.0
    y_part = y.clone()
    y_part[:2] = IGNORE_INDEX
    _, hards_part, _ = dml_losses(zs[:2], y_part, 1.0, 0.5, return_parts=True)
    assert hards_part[0].item() == pytest.approx(_ce_by_hand(zs[0][2:], y[2:]), rel=1e-5)
    only_soft = dml_losses(zs[:2], None, 1.0, 0.0)
    assert only_soft[0].item() == pytest.approx(_kl_by_hand(zs[1], zs[0], 1.0), rel=1e-5)


def test_peers_are_detached():
    zs, y = _logits(k=3)
    zs = [z.clone().requires_grad_(True) for z in zs]
    losses = dml_losses(zs, y, 2.0, 0.5)
    grads = torch.autograd.grad(losses[0], zs, allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert all(g is None or g.abs().sum() == 0 for g in grads[1:])


def test_errors_say_what_is_wrong():
    zs, y = _logits(k=2, c=5)
    with pytest.raises(ValueError, match="at least 2 participants, got 1"):
        dml_losses(zs[:1], y)
    with pytest.raises(ValueError, match=r"participant 1 gave logits of shape \(4, 7\)"):
        dml_losses([zs[0], torch.randn(4, 7)], y)
    with pytest.raises(ValueError, match="alpha"):
        dml_losses(zs, y, alpha=1.5)
    with pytest.raises(ValueError, match="labels=None needs alpha=0"):
        dml_losses(zs, None, alpha=0.5)
    with pytest.raises(ValueError, match="at least 2 students, got 1"):
        mutual_learning([MLP()], [], epochs=1, device="cpu")


def test_mutual_learning_updates_every_participant_and_lowers_the_loss():
    seed_everything(0)
    data = load_digits()
    train = data.train.loader(batch_size=100, shuffle=True, seed=0)
    students = [MLP(hidden=(32,)), MLP(hidden=(32,)), SmallCNN(width=8, depth=2)]
    before = [[p.detach().clone() for p in s.parameters()] for s in students]
    histories = mutual_learning(
        students, train, epochs=1, val_loader=data.val, lr=1e-2, device="cpu", progress=False
    )
    assert len(histories) == 3
    for s, params in zip(students, before):
        assert all(not torch.equal(a, b) for a, b in zip(params, s.parameters()))
    more = mutual_learning(
        students, train, epochs=4, val_loader=data.val, lr=1e-2, device="cpu", progress=False
    )
    for first, history in zip(histories, more):
        assert history[-1]["train_loss"] < first[0]["train_loss"]
        assert history[-1]["train_hard"] < 0.5 * first[0]["train_hard"]
        assert history[-1]["val_accuracy"] > 0.6
        assert set(history[-1]) >= {"train_loss", "train_hard", "train_soft", "val_accuracy"}


def test_alpha_one_is_training_each_student_alone():
    """With the peer term off, the loop must reproduce plain supervised training exactly."""
    data = load_digits()
    seed_everything(1)
    a, b = MLP(hidden=(16,)), MLP(hidden=(16,))
    a_alone, b_alone = copy.deepcopy(a), copy.deepcopy(b)
    loader = lambda: data.train.loader(batch_size=100, shuffle=True, seed=3)  # noqa: E731
    mutual_learning([a, b], loader(), epochs=2, alpha=1.0, device="cpu", progress=False)
    train_supervised(a_alone, loader(), epochs=2, device="cpu", progress=False)
    train_supervised(b_alone, loader(), epochs=2, device="cpu", progress=False)
    for m, alone in ((a, a_alone), (b, b_alone)):
        for p, q in zip(m.parameters(), alone.parameters()):
            assert torch.allclose(p, q, atol=1e-5)
    # with the peer term on, the students learn something else than alone
    seed_everything(1)
    c, d = MLP(hidden=(16,)), MLP(hidden=(16,))
    mutual_learning([c, d], loader(), epochs=2, alpha=0.5, device="cpu", progress=False)
    assert not torch.allclose(c.head.weight, a_alone.head.weight, atol=1e-4)


def test_peer_term_alone_makes_the_students_agree():
    seed_everything(2)
    data = load_digits()
    train = data.train.loader(batch_size=100, shuffle=True, seed=0)
    students = [MLP(hidden=(16,)), MLP(hidden=(16,))]
    history = mutual_learning(
        students,
        train,
        epochs=3,
        alpha=0.0,
        temperature=2.0,
        lr=1e-2,
        device="cpu",
        progress=False,
    )
    assert history[0][-1]["train_soft"] < 0.5 * history[0][0]["train_soft"]


# --- host-device synchronisations -------------------------------------------------------------


class _SyncCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operations that make the host wait for the device.

    On a GPU these are the ops that read a value back: ``aten._local_scalar_dense`` (behind
    ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``), ``nonzero`` / ``masked_select`` (boolean
    indexing: the output size depends on the values) and device-to-host copies. On a CPU there
    is no device to wait for, so they are counted where they happen; ``Tensor.tolist`` (how
    ``mutual_learning`` reads the epoch's means back) does not dispatch an op, so it is counted
    by wrapping it.
    """

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _count_syncs(fn, monkeypatch):
    counter = _SyncCounter()
    tolist = torch.Tensor.tolist

    def counted_tolist(t):
        counter.count += 1
        return tolist(t)

    monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)
    with counter:
        fn()
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return counter.count


def _dml_run(n_batches, epochs):
    seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16 * n_batches, 12, generator=g)
    y = torch.randint(0, 4, (len(x),), generator=g)
    students = [MLP(12, (8,), 4), MLP(12, (6,), 4)]
    loader = TensorLoader(x, y, batch_size=16, shuffle=True)
    return lambda: mutual_learning(students, loader, epochs=epochs, device="cpu", progress=False)


def test_mutual_learning_syncs_once_per_epoch(monkeypatch):
    # the checked loss alone: a dozen synchronisations for one batch of two students
    zs, y = _logits(k=2, n=8)
    per_checked_step = _count_syncs(lambda: dml_losses(zs, y), monkeypatch)
    assert per_checked_step >= 8
    short = _count_syncs(_dml_run(n_batches=4, epochs=1), monkeypatch)
    long = _count_syncs(_dml_run(n_batches=12, epochs=1), monkeypatch)
    three = _count_syncs(_dml_run(n_batches=4, epochs=3), monkeypatch)
    assert long == short  # steps after the first add none
    assert three - short == 2  # each further epoch adds one: reading its means back
    assert short <= per_checked_step + 1  # the first batch's checks and the epoch's read


def _stacked(parts):
    return torch.stack([torch.stack(p) for p in parts])


def test_unchecked_dml_losses_match_the_checked_ones():
    zs, y = _logits(k=3, n=6)
    y[1] = IGNORE_INDEX
    for tau, alpha in ((1.0, 0.5), (4.0, 0.2)):
        expected = _stacked(dml_losses(zs, y, tau, alpha, return_parts=True))
        fast = _stacked(dml_losses(zs, y.int(), tau, alpha, return_parts=True, check=False))
        assert torch.allclose(fast, expected, rtol=1e-6, atol=1e-7)
    none_labelled = torch.full_like(y, IGNORE_INDEX)
    hards = dml_losses(zs, none_labelled, 1.0, 0.5, return_parts=True, check=False)[1]
    assert torch.equal(torch.stack(hards), torch.zeros(3))


def test_mutual_learning_refuses_a_non_finite_epoch():
    x = torch.randn(32, 12)
    x[20] = float("nan")  # not in the first (checked) batch
    loader = TensorLoader(x, torch.randint(0, 4, (32,)), batch_size=16)
    students = [MLP(12, (8,), 4), MLP(12, (6,), 4)]
    with pytest.raises(ValueError, match="not finite"):
        mutual_learning(students, loader, epochs=1, device="cpu", progress=False)
