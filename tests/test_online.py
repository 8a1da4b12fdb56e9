"""Deep mutual learning: the loss by hand, peers detached, every participant trained."""

import copy
import math

import pytest
import torch

from kdlib.data import load_digits
from kdlib.distill import seed_everything, train_supervised
from kdlib.losses import IGNORE_INDEX
from kdlib.models import MLP, SmallCNN
from kdlib.online import dml_losses, mutual_learning


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
