"""Multi-teacher KD: ensemble soft targets by hand, the identities that define them, errors."""

import math

import pytest
import torch

from kdlib.data import load_digits
from kdlib.distill import Distiller, train_supervised
from kdlib.losses import kd_loss
from kdlib.models import MLP, SmallCNN
from kdlib.multi_teacher import (
    CombinedTeachers,
    average_logits,
    combine_logits,
    confidence_weights,
    ensemble_soft_targets,
    multi_teacher_kd_loss,
    teacher_ensemble,
    teacher_weights,
)
from kdlib.runtime import seed_everything


def _tensors(n=6, c=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g) * 2
    ts = [torch.randn(n, c, generator=g) * 3 for _ in range(k)]
    y = torch.randint(0, c, (n,), generator=g)
    return s, ts, y


def _softmax(values, tau=1.0):
    e = [math.exp(v / tau) for v in values]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("weights", [None, [0.2, 0.5, 0.3], "confidence"])
@pytest.mark.parametrize("confidence", ["max_prob", "entropy"])
def test_identical_teachers_equal_single_teacher_kd(weights, confidence):
    s, ts, y = _tensors()
    t = ts[0]
    for tau, alpha in [(1.0, 0.0), (4.0, 0.3), (20.0, 0.7)]:
        single = kd_loss(s, t, y, tau, alpha)
        multi = multi_teacher_kd_loss(s, [t, t, t], y, tau, alpha, weights, confidence)
        via_combine = kd_loss(s, combine_logits([t, t, t], tau, weights, confidence), y, tau, alpha)
        assert torch.allclose(multi, single, rtol=1e-6, atol=1e-6)
        assert torch.allclose(via_combine, single, rtol=1e-6, atol=1e-6)


def test_weighted_soft_targets_by_hand():
    t1 = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    t2 = torch.tensor([[-1.0, 1.0, 0.0], [4.0, 0.0, 0.0]])
    tau, w = 2.0, (1.0, 3.0)  # normalised to 0.25, 0.75
    expected = [
        [0.25 * a + 0.75 * b for a, b in zip(_softmax(r1, tau), _softmax(r2, tau))]
        for r1, r2 in zip(t1.tolist(), t2.tolist())
    ]
    got = ensemble_soft_targets([t1, t2], tau, weights=w)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    averaged = [
        [0.5 * a + 0.5 * b for a, b in zip(_softmax(r1, tau), _softmax(r2, tau))]
        for r1, r2 in zip(t1.tolist(), t2.tolist())
    ]
    assert torch.allclose(ensemble_soft_targets([t1, t2], tau), torch.tensor(averaged), atol=1e-6)
    # weights (1, 0) pick teacher 1 alone
    alone = ensemble_soft_targets([t1, t2], tau, weights=[1.0, 0.0])
    assert torch.allclose(alone, torch.softmax(t1 / tau, dim=1), atol=1e-6)


def test_confidence_weights_by_hand():
    t1 = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # sure, then undecided
    t2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    for row in range(2):
        p1, p2 = _softmax(t1[row].tolist()), _softmax(t2[row].tolist())
        m1, m2 = max(p1), max(p2)
        h1 = -sum(p * math.log(p) for p in p1)
        h2 = -sum(p * math.log(p) for p in p2)
        by_max = confidence_weights([t1, t2], "max_prob")[:, row]
        by_entropy = confidence_weights([t1, t2], "entropy")[:, row]
        assert torch.allclose(by_max, torch.tensor([m1, m2]) / (m1 + m2), atol=1e-6)
        e1, e2 = math.exp(-h1), math.exp(-h2)
        assert torch.allclose(by_entropy, torch.tensor([e1, e2]) / (e1 + e2), atol=1e-6)
    # the confident teacher gets more weight on each sample, whatever the temperature
    w = confidence_weights([t1, t2])
    assert w[0, 0] > w[1, 0] and w[1, 1] > w[0, 1]
    tau = 4.0
    p = ensemble_soft_targets([t1, t2], tau, weights="confidence")
    p1, p2 = torch.softmax(t1 / tau, 1), torch.softmax(t2 / tau, 1)
    assert torch.allclose(p, w[0][:, None] * p1 + w[1][:, None] * p2, atol=1e-6)


def test_combine_logits_reproduce_the_ensemble_and_stay_finite():
    _, ts, _ = _tensors(c=7)
    for tau in (0.5, 1.0, 4.0):
        for weights in (None, [1, 2, 3], [0, 0, 1], "confidence"):
            z = combine_logits(ts, tau, weights)
            p = ensemble_soft_targets(ts, tau, weights)
            assert torch.allclose(torch.softmax(z / tau, dim=1), p, atol=1e-6)
            assert torch.allclose(p.sum(1), torch.ones(len(p)), atol=1e-6)
            assert torch.isfinite(z).all()
    # extreme logits: probabilities underflow, the log-space computation does not
    huge = [torch.tensor([[300.0, -300.0, 0.0]]), torch.tensor([[-300.0, 300.0, 0.0]])]
    assert torch.isfinite(combine_logits(huge, 1.0)).all()
    # one teacher: its own logits up to a per-row constant
    t = ts[0]
    diff = combine_logits([t], 3.0) - t
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-5)


def test_average_logits_and_weights_shape():
    _, ts, _ = _tensors()
    assert torch.allclose(average_logits(ts), (ts[0] + ts[1] + ts[2]) / 3, atol=1e-6)
    w = teacher_weights(ts, [2, 2, 4])
    assert w.shape == (3, 6)
    assert torch.allclose(w[:, 0], torch.tensor([0.25, 0.25, 0.5]))


def test_errors_say_what_is_wrong():
    s, ts, y = _tensors(c=5)
    ten = torch.randn(6, 10)
    with pytest.raises(ValueError, match=r"teacher 2 has 10 classes but teacher 0 has 5"):
        ensemble_soft_targets([ts[0], ts[1], ten], 4.0)
    with pytest.raises(ValueError, match=r"teacher 1 gave 4 rows but teacher 0 gave 6"):
        combine_logits([ts[0], ts[1][:4]], 4.0)
    with pytest.raises(ValueError, match=r"one number per teacher \(3\)"):
        combine_logits(ts, 4.0, weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        combine_logits(ts, 4.0, weights=[1, -1, 1])
    with pytest.raises(ValueError, match="not all zero"):
        combine_logits(ts, 4.0, weights=[0, 0, 0])
    with pytest.raises(ValueError, match="'confidence'"):
        combine_logits(ts, 4.0, weights="median")
    with pytest.raises(ValueError, match="confidence must be one of"):
        confidence_weights(ts, "margin")
    with pytest.raises(ValueError, match="empty"):
        combine_logits([], 4.0)
    with pytest.raises(ValueError, match="list of"):
        combine_logits(ts[0], 4.0)
    with pytest.raises(ValueError, match="temperature"):
        combine_logits(ts, 0.0)
    with pytest.raises(ValueError, match="student has 10 classes, the teachers have 5"):
        multi_teacher_kd_loss(ten, ts, y, 4.0)


def test_distiller_with_a_teacher_ensemble_trains_the_student():
    seed_everything(0)
    data = load_digits()
    train = data.train.loader(batch_size=100, shuffle=True, seed=0)
    # teachers of different architectures, briefly trained
    teachers = [MLP(hidden=(64,)), MLP(hidden=(32, 32)), SmallCNN(width=4, depth=1)]
    for t in teachers:
        train_supervised(t, train, epochs=3, lr=1e-2, device="cpu", progress=False)
    student = MLP(hidden=(16,))
    before = [p.detach().clone() for p in student.parameters()]
    teacher_params = [p.detach().clone() for t in teachers for p in t.parameters()]
    combine = teacher_ensemble(temperature=4.0, weights="confidence")
    trainer = Distiller(
        student,
        teachers,
        temperature=4.0,
        alpha=0.3,
        combine_teachers=combine,
        lr=1e-2,
        device="cpu",
        progress=False,
    )
    history = trainer.fit(train, epochs=4, val_loader=data.val)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_soft"] < history[0]["train_soft"]
    assert history[-1]["val_accuracy"] > 0.7
    assert all(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    after = [p for t in teachers for p in t.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(teacher_params, after))


def test_distiller_refuses_a_combine_at_another_temperature():
    teachers = [MLP(hidden=(8,)), MLP(hidden=(8,))]
    with pytest.raises(ValueError, match="temperature"):
        Distiller(
            MLP(hidden=(8,)),
            teachers,
            temperature=2.0,
            combine_teachers=teacher_ensemble(temperature=4.0),
            device="cpu",
            progress=False,
        )


def test_combined_teachers_give_a_population_the_distillers_ensemble():
    """Several teachers as one module: each member of a population distilled from it equals
    that seed distilled alone by the Distiller from the list of teachers and the same combine."""
    from kdlib.population import distill_population

    data = load_digits()
    seed_everything(0)
    teachers = [MLP(hidden=(32,)), SmallCNN(width=4, depth=1)]
    for t in teachers:
        train_supervised(t, data.train.loader(100, shuffle=True, seed=0), 2, lr=1e-2, device="cpu")
    combine = teacher_ensemble(temperature=4.0, weights="confidence")
    one = CombinedTeachers(teachers, combine)
    x = data.val.x[:16]
    with torch.no_grad():
        assert torch.equal(one(x), combine([t(x) for t in teachers]))

    def loader():
        return data.train.loader(64, shuffle=True, seed=0)

    def student():
        return MLP(hidden=(16,))

    kw = dict(temperature=4.0, alpha=0.5, lr=1e-2, device="cpu")
    pop = distill_population(student, [3, 4], one, loader(), 1, **kw)
    for k, s in enumerate([3, 4]):
        seed_everything(s)
        alone = student()
        Distiller(alone, teachers, combine_teachers=combine, progress=False, **kw).fit(loader(), 1)
        for a, b in zip(alone.state_dict().values(), pop.member(k).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_combined_teachers_say_what_is_wrong():
    with pytest.raises(ValueError, match="teachers is empty"):
        CombinedTeachers([], teacher_ensemble())
    with pytest.raises(ValueError, match="teachers must be nn.Modules, got str"):
        CombinedTeachers([MLP(), "teacher"], teacher_ensemble())
    with pytest.raises(ValueError, match="combine must be a function"):
        CombinedTeachers([MLP()], 4.0)
