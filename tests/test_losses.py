"""kd_loss and its parts against the formula, the derivation and the pitfalls."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlib.losses import (
    IGNORE_INDEX,
    entropy,
    hard_loss,
    kd_loss,
    kl_divergence,
    logit_matching_loss,
    soft_loss,
    soft_targets,
    softmax_with_temperature,
)


def _tensors(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g) * 2
    t = torch.randn(n, c, generator=g) * 3
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def test_softmax_with_temperature_by_hand():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    e = [math.exp(v / 2) for v in (1, 2, 3)]
    expected = torch.tensor([[v / sum(e) for v in e]])
    assert torch.allclose(softmax_with_temperature(z, 2.0), expected, atol=1e-7)
    # high temperature flattens towards uniform, low sharpens towards one-hot
    assert torch.allclose(softmax_with_temperature(z, 1e4), torch.full((1, 3), 1 / 3), atol=1e-4)
    assert softmax_with_temperature(z, 0.01)[0, 2] > 0.999


def test_entropy_grows_with_temperature():
    z = torch.tensor([[4.0, 1.0, 0.5, -2.0]])
    values = [entropy(softmax_with_temperature(z, t)).item() for t in (0.5, 1, 2, 4, 8)]
    assert values == sorted(values)
    assert values[-1] < math.log(4)
    assert entropy(torch.tensor([0.0, 1.0])).item() == 0.0


def test_kd_loss_equals_formula_by_hand():
    s, t, y = _tensors()
    tau, alpha = 3.0, 0.4
    n, c = s.shape
    # written out with plain loops over samples and classes
    hard = 0.0
    soft = 0.0
    for i in range(n):
        ps = [math.exp(v) for v in s[i].tolist()]
        hard += -math.log(ps[y[i]] / sum(ps))
        pt = [math.exp(v / tau) for v in t[i].tolist()]
        pst = [math.exp(v / tau) for v in s[i].tolist()]
        pt = [v / sum(pt) for v in pt]
        pst = [v / sum(pst) for v in pst]
        soft += sum(pt[k] * math.log(pt[k] / pst[k]) for k in range(c))
    expected = alpha * hard / n + (1 - alpha) * tau**2 * soft / n
    parts = kd_loss(s, t, y, temperature=tau, alpha=alpha, return_parts=True)
    assert parts.total.item() == pytest.approx(expected, rel=1e-5)
    assert parts.hard.item() == pytest.approx(hard / n, rel=1e-5)
    assert parts.soft.item() == pytest.approx(tau**2 * soft / n, rel=1e-5)


def test_kd_loss_matches_the_seed_example():
    s, t, y = _tensors(n=16, c=10, seed=3)
    tau, alpha = 4.0, 0.7
    seed = alpha * F.cross_entropy(s, y) + (1 - alpha) * F.kl_div(
        F.log_softmax(s / tau, dim=1), F.softmax(t / tau, dim=1), reduction="batchmean"
    ) * (tau * tau)
    assert kd_loss(s, t, y, tau, alpha).item() == pytest.approx(seed.item(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:reduction")
def test_batchmean_not_mean():
    """F.kl_div(reduction='mean') divides by N*C; the KD loss must be per sample."""
    s, t, _ = _tensors(n=8, c=10)
    per_sample = kl_divergence(t, s, 2.0).mean()
    wrong = F.kl_div(F.log_softmax(s / 2, dim=1), F.softmax(t / 2, dim=1), reduction="mean")
    assert soft_loss(s, t, 2.0).item() == pytest.approx(4 * per_sample.item(), rel=1e-6)
    assert per_sample.item() == pytest.approx(10 * wrong.item(), rel=1e-5)


def test_identical_logits_give_zero_and_kl_is_nonnegative():
    s, t, _ = _tensors(n=32, c=7)
    assert soft_loss(t, t, 4.0).item() == 0.0
    assert (kl_divergence(t, s, 3.0) >= 0).all()


def test_gradient_equals_derivation():
    s, t, y = _tensors(n=5, c=4, seed=1)
    tau, alpha = 2.5, 0.3
    s = s.clone().requires_grad_(True)
    kd_loss(s, t, y, tau, alpha).backward()
    onehot = F.one_hot(y, 4).float()
    p_s = torch.softmax(s.detach(), 1)
    p_s_tau = torch.softmax(s.detach() / tau, 1)
    p_t_tau = torch.softmax(t / tau, 1)
    expected = (alpha * (p_s - onehot) + (1 - alpha) * tau * (p_s_tau - p_t_tau)) / len(y)
    assert torch.allclose(s.grad, expected, atol=1e-6)


def test_tau_squared_keeps_soft_gradient_size():
    """Without tau^2 the soft gradient shrinks like 1/tau^2; with it, it stays of one size."""
    s, t, _ = _tensors(n=64, c=10, seed=2)
    scaled, unscaled = [], []
    for tau in (2.0, 4.0, 8.0, 16.0):
        z = s.clone().requires_grad_(True)
        soft_loss(z, t, tau).backward()
        scaled.append(z.grad.norm().item())
        unscaled.append(scaled[-1] / tau**2)
    assert max(scaled) / min(scaled) < 1.5
    assert unscaled[0] / unscaled[-1] > 40  # 1/tau^2: (16/2)^2 = 64, roughly


def test_teacher_receives_no_gradient():
    s, t, y = _tensors()
    t = t.clone().requires_grad_(True)
    kd_loss(s.requires_grad_(True), t, y).backward()
    assert t.grad is None


def test_alpha_one_is_cross_entropy_and_zero_is_pure_soft():
    s, t, y = _tensors()
    assert kd_loss(s, t, y, 4.0, 1.0).item() == pytest.approx(F.cross_entropy(s, y).item())
    assert kd_loss(s, t, y, 4.0, 0.0).item() == pytest.approx(soft_loss(s, t, 4.0).item())
    assert kd_loss(s, t, None, 4.0, 0.0).item() == pytest.approx(soft_loss(s, t, 4.0).item())


def test_unlabelled_samples_only_enter_the_soft_term():
    s, t, y = _tensors(n=8)
    y_masked = y.clone()
    y_masked[4:] = IGNORE_INDEX
    parts = kd_loss(s, t, y_masked, 4.0, 0.5, return_parts=True)
    assert parts.hard.item() == pytest.approx(F.cross_entropy(s[:4], y[:4]).item(), rel=1e-6)
    assert parts.soft.item() == pytest.approx(soft_loss(s, t, 4.0).item(), rel=1e-6)
    none_labelled = torch.full_like(y, IGNORE_INDEX)
    assert hard_loss(s, none_labelled).item() == 0.0


def test_loss_is_float32_under_low_precision_inputs():
    s, t, y = _tensors()
    out = kd_loss(s.bfloat16(), t.bfloat16(), y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    # extreme logits: probabilities underflow, log space keeps the loss finite
    big = torch.tensor([[1000.0, -1000.0, 0.0]])
    assert torch.isfinite(kd_loss(big, -big, torch.tensor([0]), 1.0, 0.5))


def test_high_temperature_approaches_logit_matching():
    s, t, _ = _tensors(n=16, c=10, seed=4)
    target = logit_matching_loss(s, t).item()
    gaps = [abs(kd_loss(s, t, None, tau, 0.0).item() - target) for tau in (1.0, 10.0, 100.0)]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.01 * target


def test_soft_targets_sum_to_one_and_detach():
    t = torch.randn(3, 4, requires_grad=True)
    p = soft_targets(t, 2.0)
    assert torch.allclose(p.sum(1), torch.ones(3)) and not p.requires_grad


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    s, t, y = _tensors()
    with pytest.raises(ValueError, match=message):
        kd_loss(s, t, y, **kwargs)


def test_bad_inputs_are_named():
    s, t, y = _tensors(n=6, c=5)
    with pytest.raises(ValueError, match="class-count mismatch.*5.*7"):
        kd_loss(s, torch.randn(6, 7), y)
    with pytest.raises(ValueError, match="batch-size mismatch"):
        kd_loss(s, torch.randn(4, 5), y)
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        kd_loss(s.unsqueeze(0), t, y)
    with pytest.raises(ValueError, match="labels out of range"):
        kd_loss(s, t, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match="labels must have shape"):
        kd_loss(s, t, y[:3])
    with pytest.raises(ValueError, match="integer class indices"):
        kd_loss(s, t, y.float())
    nan = s.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="student_logits contain 1 non-finite"):
        kd_loss(nan, t, y)
    inf = t.clone()
    inf[1, 1] = float("inf")
    with pytest.raises(ValueError, match="teacher_logits contain 1 non-finite"):
        kd_loss(s, inf, y)
    with pytest.raises(ValueError, match="labels=None needs alpha=0"):
        kd_loss(s, t, None, alpha=0.5)


# --- one formula per loss: check=False is the same code without the checks ------------------


class _Syncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that make the host wait for the device (read a value back, or size an
    output by the values): ``_local_scalar_dense`` (``.item()``, ``bool(t)``), ``nonzero``..."""

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _every_loss():
    """``name -> (loss(inputs..., check=...) -> scalar, inputs)`` for every loss of kdlib that
    takes ``check``; the first input of each carries the gradient compared below."""
    from kdlib.features import attention_transfer_loss, hint_loss, make_adapter
    from kdlib.losses import dkd_loss
    from kdlib.online import dml_losses
    from kdlib.relations import rkd_loss, similarity_preserving_loss
    from kdlib.vit import deit_loss

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(8, 5, generator=g) * 2, torch.randn(8, 5, generator=g) * 3
    y = torch.randint(0, 5, (8,), generator=g)
    y_some = y.clone()
    y_some[2] = IGNORE_INDEX
    fs, ft = torch.randn(8, 4, 6, 6, generator=g), torch.randn(8, 6, 3, 3, generator=g)
    torch.manual_seed(0)
    adapter = make_adapter(4, 6, kind="conv")
    return {
        "kd": (lambda z, check: kd_loss(z, t, y_some, 4.0, 0.3, check=check), s),
        "kd_no_labels": (lambda z, check: kd_loss(z, t, None, 2.0, 0.0, check=check), s),
        "hard": (lambda z, check: hard_loss(z, y_some.int(), 0.1, check=check), s),
        "soft": (lambda z, check: soft_loss(z, t, 3.0, check=check), s),
        "dkd": (lambda z, check: dkd_loss(z, t, y, 1.0, 8.0, 4.0, check=check), s),
        "dml": (
            lambda z, check: sum(dml_losses([z, t, s * 0.5], y_some, 2.0, 0.4, check=check)),
            s,
        ),
        "deit_hard": (lambda z, check: deit_loss(z, z * 0.7, t, y_some, "hard", check=check), s),
        "deit_soft": (
            lambda z, check: deit_loss(z, z * 0.7, t, y_some, "soft", 3.0, 0.1, check=check),
            s,
        ),
        "hint": (lambda f, check: hint_loss(f, ft, adapter, check=check), fs),
        "attention": (lambda f, check: attention_transfer_loss(f, ft, check=check), fs),
        "rkd": (lambda e, check: rkd_loss(e, t, check=check), s),
        "similarity_preserving": (
            lambda f, check: similarity_preserving_loss(f, ft, check=check),
            fs,
        ),
    }


@pytest.mark.parametrize("name", sorted(_every_loss()))
def test_unchecked_loss_equals_checked_loss_value_and_gradient(name):
    loss, first = _every_loss()[name]
    results = {}
    for check in (True, False):
        z = first.clone().requires_grad_(True)
        value = loss(z, check)
        value.backward()
        results[check] = (value.detach(), z.grad)
    assert torch.equal(results[True][0], results[False][0]), name  # the same code: bit for bit
    assert torch.equal(results[True][1], results[False][1]), name
    assert results[True][1].abs().sum() > 0  # the gradient does reach the input


@pytest.mark.parametrize("name", sorted(_every_loss()))
def test_unchecked_loss_never_waits_for_the_device(name):
    loss, first = _every_loss()[name]
    z = first.clone().requires_grad_(True)
    with _Syncs() as unchecked:
        loss(z, False).backward()
    with _Syncs() as checked:
        loss(z.detach().clone().requires_grad_(True), True)
    assert unchecked.count == 0, f"{name}: {unchecked.count} host-device synchronisations"
    assert checked.count > 0  # the checks do read values back (so the count can fail)


def test_the_checks_run_only_when_asked():
    s, t, y = _tensors()
    bad = s.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="student_logits"):
        kd_loss(bad, t, y, check=True)
    assert torch.isnan(kd_loss(bad, t, y, check=False))  # same formula, NaN flows through
    with pytest.raises(ValueError, match="labels out of range"):
        hard_loss(s, torch.full_like(y, 9))
