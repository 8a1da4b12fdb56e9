"""Decoupled KD: the two terms by hand, the decomposition of KD, stability, guards, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlib import data, models
from kdlib.distill import Batch, Distiller, train_supervised
from kdlib.losses import DKDLossParts, DKDTerm, dkd_loss, kl_divergence
from kdlib.runtime import seed_everything


def _tensors(n=5, c=6, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g) * scale
    t = torch.randn(n, c, generator=g) * scale * 1.5
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def _mdistiller_dkd(s, t, y, alpha, beta, tau):
    """The reference formula of mdistiller (probabilities, then log; target masked by -1000)."""
    gt = F.one_hot(y, s.shape[1]).float()
    ps, pt = F.softmax(s / tau, dim=1), F.softmax(t / tau, dim=1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], dim=1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * tau**2 / len(y)
    pt2 = F.softmax(t / tau - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(s / tau - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * tau**2 / len(y)
    return alpha * tckd + beta * nckd


def test_dkd_by_hand():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    tau = 2.0

    def probs(z):
        e = [math.exp(v / tau) for v in z]
        return [v / sum(e) for v in e]

    ps, pt = probs([2.0, 0.0, -1.0]), probs([1.0, 1.0, 0.0])
    tckd = sum(b * math.log(b / a) for a, b in ((ps[0], pt[0]), (1 - ps[0], 1 - pt[0])))
    hs = [ps[1] / (1 - ps[0]), ps[2] / (1 - ps[0])]
    ht = [pt[1] / (1 - pt[0]), pt[2] / (1 - pt[0])]
    nckd = sum(b * math.log(b / a) for a, b in zip(hs, ht))
    out = dkd_loss(s, t, y, tckd_weight=0.5, nckd_weight=3.0, temperature=tau, return_parts=True)
    assert isinstance(out, DKDLossParts)
    assert out.tckd.item() == pytest.approx(tau**2 * tckd, rel=1e-5)
    assert out.nckd.item() == pytest.approx(tau**2 * nckd, rel=1e-5)
    assert out.total.item() == pytest.approx(tau**2 * (0.5 * tckd + 3.0 * nckd), rel=1e-5)


def test_dkd_matches_mdistiller_formula():
    s, t, y = _tensors()
    for alpha, beta, tau in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0)):
        ours = dkd_loss(s, t, y, tckd_weight=alpha, nckd_weight=beta, temperature=tau)
        assert torch.allclose(ours, _mdistiller_dkd(s, t, y, alpha, beta, tau), rtol=1e-4)


def test_kd_decomposes_into_tckd_and_weighted_nckd():
    # Zhao et al. 2022, eq. 1-5: KL(p_T || p_S) = TCKD + (1 - p_T,target) * NCKD, per sample
    s, t, y = _tensors(n=7, c=5, seed=3)
    tau = 3.0
    for i in range(len(y)):
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        parts = dkd_loss(si, ti, yi, temperature=tau, return_parts=True)
        pt_target = torch.softmax(ti / tau, dim=1)[0, yi].item()
        kd = tau**2 * kl_divergence(ti, si, tau).item()
        assert kd == pytest.approx(
            parts.tckd.item() + (1 - pt_target) * parts.nckd.item(), rel=1e-4
        )


def test_dkd_weights_select_its_parts():
    s, t, y = _tensors(seed=1)
    parts = dkd_loss(s, t, y, return_parts=True)
    assert torch.allclose(parts.total, 1.0 * parts.tckd + 8.0 * parts.nckd)
    assert torch.allclose(dkd_loss(s, t, y, tckd_weight=1.0, nckd_weight=0.0), parts.tckd)
    assert torch.allclose(dkd_loss(s, t, y, tckd_weight=0.0, nckd_weight=1.0), parts.nckd)
    assert parts.tckd.item() > 0 and parts.nckd.item() > 0
    same = dkd_loss(s, s.clone(), y, return_parts=True)
    assert same.tckd.abs().item() < 1e-6 and same.nckd.abs().item() < 1e-6


def test_dkd_stays_finite_for_confident_logits():
    s, t, y = _tensors(scale=1.0)
    t = t.clone()
    t[torch.arange(len(y)), y] = 400.0  # the teacher is certain: 1 - p_t underflows to 0
    s = s.clone().requires_grad_(True)
    with torch.no_grad():
        s[torch.arange(len(y)), y] = 300.0
    loss = dkd_loss(s, t, y, temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # the probability-space reference breaks here: log(1 - p_t) = log(0)
    assert not torch.isfinite(_mdistiller_dkd(s.detach(), t, y, 1.0, 8.0, 1.0))


def test_dkd_teacher_gets_no_gradient():
    s, t, y = _tensors()
    s.requires_grad_(True)
    t.requires_grad_(True)
    dkd_loss(s, t, y).backward()
    assert s.grad is not None and t.grad is None


def test_dkd_guards():
    s, t, y = _tensors(c=4)
    with pytest.raises(ValueError, match="at least 3 classes"):
        dkd_loss(s[:, :2], t[:, :2], y.clamp(max=1))
    with pytest.raises(ValueError, match="unlabelled"):
        dkd_loss(s, t, torch.tensor([0, -1, 2, 1, 3]))
    with pytest.raises(ValueError, match="needs the labels"):
        dkd_loss(s, t, None)
    with pytest.raises(ValueError, match="class-count mismatch"):
        dkd_loss(s, t[:, :3], y)
    with pytest.raises(ValueError, match="labels out of range"):
        dkd_loss(s, t, torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="nckd_weight must be a number >= 0"):
        dkd_loss(s, t, y, nckd_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        dkd_loss(s, t, y, temperature=0.0)


def test_dkd_term_protocol():
    s, t, y = _tensors()
    term = DKDTerm(tckd_weight=2.0, nckd_weight=4.0, temperature=3.0, weight=0.5)
    assert term.weight == 0.5 and term.name == "dkd"
    batch = Batch(torch.rand(5, 1), y, None, s, t)
    assert torch.allclose(term(batch), dkd_loss(s, t, y, 2.0, 4.0, 3.0))
    with pytest.raises(ValueError, match="needs a teacher"):
        term(Batch(torch.rand(5, 1), y, None, s, None))


def test_dkd_old_weight_names_still_work_with_a_deprecation_warning():
    # the paper's alpha/beta were renamed: kd_loss's alpha weighs the cross-entropy, not TCKD
    s, t, y = _tensors(seed=2)
    want = dkd_loss(s, t, y, tckd_weight=2.0, nckd_weight=3.0)
    with pytest.warns(DeprecationWarning, match="use tckd_weight="):
        got = dkd_loss(s, t, y, alpha=2.0, nckd_weight=3.0)
    assert torch.equal(got, want)
    with pytest.warns(DeprecationWarning, match="use nckd_weight="):
        assert torch.equal(dkd_loss(s, t, y, 2.0, beta=3.0), want)
    with pytest.warns(DeprecationWarning):
        term = DKDTerm(alpha=2.0, beta=3.0)
    assert (term.tckd_weight, term.nckd_weight) == (2.0, 3.0)
    with pytest.raises(ValueError, match="tckd_weight once"):
        dkd_loss(s, t, y, tckd_weight=0.5, alpha=2.0)
    assert "tckd_weight=1.0, nckd_weight=8.0" in repr(DKDTerm())


def test_dkd_trains_a_student_on_digits():
    digits = data.load_digits(seed=0)
    seed_everything(0)
    teacher = models.SmallCNN(width=16)
    loader = digits.train.loader(64, shuffle=True)
    train_supervised(teacher, loader, epochs=3, lr=3e-3, progress=False)
    seed_everything(1)
    student = models.MLP(hidden=(32,))
    # kd_loss at alpha = 1 is plain cross-entropy; DKD comes in as a term
    distiller = Distiller(student, teacher, alpha=1.0, terms=[DKDTerm()], lr=3e-3, progress=False)
    history = distiller.fit(loader, epochs=3, val_loader=digits.val)
    values = [h["train_dkd"] for h in history]
    assert values[-1] < 0.8 * values[0], values
    assert history[-1]["val_accuracy"] > 0.5
