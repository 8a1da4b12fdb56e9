"""Feature taps and feature-based distillation: FitNets hints and attention transfer."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlib import models
from kdlib.distill import Batch, Distiller
from kdlib.features import (
    AttentionTerm,
    FeatureTaps,
    HintTerm,
    attention_map,
    attention_transfer_loss,
    feature_shapes,
    hint_loss,
    make_adapter,
    module_names,
    resize_to,
)
from kdlib.runtime import seed_everything


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def teacher(quick_teacher):
    return quick_teacher


# --- FeatureTaps ------------------------------------------------------------------------------


def test_taps_capture_the_named_outputs():
    model = models.SmallCNN(width=4)
    x = torch.rand(3, 1, 8, 8)
    _, expected = model(x, return_features=True)
    with FeatureTaps(model, ["block1", "pool"]) as taps:
        model(x)
        assert list(taps.features) == ["block1", "pool"]
        assert torch.equal(taps["block1"], expected["block1"])
        assert torch.equal(taps["pool"], expected["pool"])
        assert taps["block1"].requires_grad  # the student's taps keep the graph
    with FeatureTaps(model, ["block1"], detach=True) as taps:
        model(x)
        assert not taps["block1"].requires_grad


def test_taps_remove_their_hooks():
    model = models.SmallCNN(width=4)
    assert _hook_count(model) == 0
    for _ in range(3):
        with FeatureTaps(model, ["block1", "block2", "pool"]) as taps:
            assert _hook_count(model) == 3 == len(taps)
            model(torch.rand(2, 1, 8, 8))
        assert _hook_count(model) == 0
        assert taps.features == {}


def test_distiller_leaves_no_hooks_after_repeated_fits(digits, teacher):
    student = models.SmallCNN(width=4)
    small = digits.train.subset(range(128)).loader(64)
    for _ in range(3):
        term = HintTerm("block1", "block1", 4, 16)
        Distiller(student, teacher, terms=[term], progress=False).fit(small, epochs=1)
        assert _hook_count(student) == 0
        assert _hook_count(teacher) == 0


def test_a_distiller_with_feature_terms_validates_between_epochs(digits, teacher):
    """Evaluating on a validation split between epochs is not a training step: the taps
    capture nothing then (they used to see every validation batch and stop the run)."""
    student = models.SmallCNN(width=4)
    small = digits.train.subset(range(128)).loader(64)
    term = HintTerm("block1", "block1", 4, 16)
    distiller = Distiller(student, teacher, terms=[term], progress=False)
    history = distiller.fit(small, epochs=2, val_loader=digits.val)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0 <= h["val_accuracy"] <= 1 for h in history)
    assert _hook_count(student) == 0 and _hook_count(teacher) == 0


def test_paused_taps_capture_nothing_and_resume():
    model = models.SmallCNN(width=4)
    taps = FeatureTaps(model, ["block1"])
    model(torch.rand(2, 1, 8, 8))
    with taps.paused():
        assert taps.features == {}  # the last capture is let go
        model(torch.rand(2, 1, 8, 8))
        model(torch.rand(2, 1, 8, 8))
        assert taps.features == {}
    model(torch.rand(3, 1, 8, 8))
    assert taps["block1"].shape[0] == 3
    taps.remove()


def test_missing_layer_lists_available_names():
    model = models.SmallCNN(width=4)
    with pytest.raises(ValueError) as err:
        FeatureTaps(model, ["block1", "layer9"])
    message = str(err.value)
    assert "'layer9'" in message and "available names" in message
    for name in ("block1", "block2", "pool", "head"):
        assert name in message
    assert _hook_count(model) == 0  # nothing registered when a name is wrong


def test_distiller_reports_a_missing_layer(digits, teacher):
    student = models.SmallCNN(width=4)
    term = HintTerm("block7", "block1", 4, 16)
    with pytest.raises(ValueError, match="block7.*available names"):
        Distiller(student, teacher, terms=[term], progress=False).fit(
            digits.train.subset(range(64)).loader(64), epochs=1
        )


def test_shared_module_raises_and_wrapper_is_unwrapped():
    relu = nn.ReLU()
    shared = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    with FeatureTaps(shared, ["1"]) as taps, pytest.raises(RuntimeError, match="ran twice"):
        shared(torch.rand(2, 4))
    model = models.MLP(hidden=(8,))
    wrapped = nn.DataParallel(model)
    assert module_names(wrapped) == module_names(model)
    with FeatureTaps(wrapped, ["fc1"]) as taps:
        model(torch.rand(2, 64))
        assert taps["fc1"].shape == (2, 8)


def test_feature_shapes():
    model = models.SmallCNN(width=8, depth=3)
    model.train()
    shapes = feature_shapes(model, (1, 8, 8))
    assert shapes == {
        "block1": (8, 4, 4),
        "block2": (16, 2, 2),
        "block3": (32, 2, 2),
        "pool": (32,),
    }
    assert model.training and _hook_count(model) == 0
    assert feature_shapes(models.MLP(hidden=(5, 3)), (1, 8, 8)) == {"fc1": (5,), "fc2": (3,)}


# --- hint loss --------------------------------------------------------------------------------


def test_make_adapter_kinds():
    assert isinstance(make_adapter(8, 8), nn.Identity)
    conv = make_adapter(4, 8)
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv(torch.rand(2, 4, 3, 3)).shape == (2, 8, 3, 3)
    lin = make_adapter(4, 8, kind="linear")
    assert isinstance(lin, nn.Linear) and lin(torch.rand(2, 4)).shape == (2, 8)
    assert isinstance(make_adapter(8, 8, identity_if_equal=False), nn.Conv2d)
    with pytest.raises(ValueError, match="kind"):
        make_adapter(4, 8, kind="mlp")
    with pytest.raises(ValueError, match="student_channels"):
        make_adapter(0, 8)


def test_hint_loss_by_hand():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    t = torch.tensor([[1.5, 2.0, 1.0], [0.0, 1.0, 4.0]])
    # squared errors 0.25, 0, 4, 0, 4, 0 over 6 elements
    assert hint_loss(s, t).item() == pytest.approx(8.25 / 6)
    # a linear adapter that doubles: (2s - t)^2
    lin = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(2 * torch.eye(3))
    expected = ((2 * s - t) ** 2).mean().item()
    assert hint_loss(s, t, lin).item() == pytest.approx(expected)


def test_hint_loss_zero_for_identical_features():
    f = torch.randn(4, 6, 3, 3)
    assert hint_loss(f, f.clone()).item() == 0.0
    conv = make_adapter(6, 6, identity_if_equal=False)
    assert hint_loss(f, conv(f).detach(), conv).item() == 0.0


def test_hint_loss_adapter_and_resize():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    t = torch.randn(2, 5, 2, 2, generator=g, requires_grad=True)
    conv = make_adapter(3, 5)
    loss = hint_loss(s, t, conv)
    # 1x1 conv, then 2x2 average pooling down to the teacher's 2x2
    expected = F.mse_loss(F.avg_pool2d(conv(s), 2), t)
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert s.grad is not None and conv.weight.grad is not None
    assert t.grad is None  # the teacher is detached
    # a smaller student map is interpolated up
    up = resize_to(torch.ones(1, 2, 2, 2), (4, 4))
    assert up.shape == (1, 2, 4, 4) and torch.allclose(up, torch.ones(1, 2, 4, 4))


def test_hint_loss_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"channel mismatch.*4 channels.*8.*make_adapter\(4, 8"):
        hint_loss(torch.rand(2, 4, 3, 3), torch.rand(2, 8, 3, 3))
    with pytest.raises(ValueError, match="batch-size mismatch"):
        hint_loss(torch.rand(2, 4), torch.rand(3, 4))
    with pytest.raises(ValueError, match="rank mismatch"):
        hint_loss(torch.rand(2, 4, 3, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="conv adapter needs"):
        hint_loss(torch.rand(2, 4), torch.rand(2, 8), make_adapter(4, 8, "conv"))
    with pytest.raises(ValueError, match="after the adapter"):
        hint_loss(torch.rand(2, 4, 3, 3), torch.rand(2, 8, 3, 3), make_adapter(4, 6))


def test_hint_term_adapter_and_missing_feature():
    assert isinstance(HintTerm("a", "b", 8, 8).adapter, nn.Identity)
    assert isinstance(HintTerm("a", "b", 4, 8).adapter, nn.Conv2d)
    assert isinstance(HintTerm("a", "b", 4, 8, kind="linear").adapter, nn.Linear)
    term = HintTerm("a", "b", 4, 8)
    assert term.student_features == ["a"] and term.teacher_features == ["b"]
    batch = Batch(torch.rand(2, 1), torch.zeros(2, dtype=torch.long), None, torch.rand(2, 3), None)
    with pytest.raises(ValueError, match="no student feature 'a'"):
        term(batch)
    student, teacher = models.MLP(hidden=(5,)), models.SmallCNN(width=4)
    built = HintTerm.from_models(student, teacher, "fc1", "pool", (1, 8, 8))
    assert isinstance(built.adapter, nn.Linear) and built.adapter.weight.shape == (8, 5)


def test_hint_term_trains_student_and_adapter(digits, teacher):
    seed_everything(1)
    student = models.SmallCNN(width=4)
    term = HintTerm.from_models(student, teacher, "block1", "block1", (1, 8, 8))
    before = term.adapter.weight.detach().clone()
    distiller = Distiller(student, teacher, alpha=0.5, terms=[term], lr=3e-3, progress=False)
    history = distiller.fit(digits.train.loader(64, shuffle=True), epochs=3)
    hints = [h["train_hint"] for h in history]
    assert hints[-1] < 0.8 * hints[0], hints
    assert not torch.equal(before, term.adapter.weight)  # the adapter is trained too
    assert not any("adapter" in k for k in student.state_dict())  # and not exported


# --- attention transfer -----------------------------------------------------------------------


def test_attention_map_by_hand():
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0] = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    f[0, 1] = torch.tensor([[-1.0, 0.0], [0.0, 2.0]])
    # mean over channels of f^2: [[1, 0], [2, 2]]; its norm is 3
    expected = torch.tensor([[1.0, 0.0, 2.0, 2.0]]) / 3.0
    assert torch.allclose(attention_map(f), expected)
    # p = 1: mean of |f| = [[1, 0], [1, 1]], norm sqrt(3)
    assert torch.allclose(attention_map(f, p=1), torch.tensor([[1.0, 0, 1, 1]]) / math.sqrt(3))


def test_attention_maps_are_normalised():
    f = torch.randn(5, 7, 4, 3)
    a = attention_map(f)
    assert a.shape == (5, 12)
    assert torch.allclose(a.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(attention_map(f * 10.0), a, atol=1e-6)  # invariant to scale
    assert torch.equal(attention_map(torch.zeros(2, 3, 2, 2)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        attention_map(torch.rand(2, 5))


def test_attention_transfer_pools_the_larger_map_down():
    g = torch.Generator().manual_seed(1)
    small, large = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 6, 4, 4, generator=g)
    pooled = F.adaptive_avg_pool2d(large, 2)
    # a student map smaller than the teacher's pools the teacher down, and the other way round
    assert torch.allclose(
        attention_transfer_loss(small, large), attention_transfer_loss(small, pooled)
    )
    assert torch.allclose(
        attention_transfer_loss(large, small), attention_transfer_loss(pooled, small)
    )
    assert attention_transfer_loss(small, large).item() > 0


def test_attention_transfer_loss_by_hand():
    s = torch.zeros(1, 1, 1, 2)
    s[0, 0, 0] = torch.tensor([1.0, 0.0])  # map (1, 0)
    t = torch.ones(1, 3, 1, 2)  # map (1, 1) / sqrt(2)
    r = 1 / math.sqrt(2)
    sq = (1 - r) ** 2 + r**2
    assert attention_transfer_loss(s, t).item() == pytest.approx(sq / 2)  # mean over 2 positions
    assert attention_transfer_loss(s, t, reduction="batchmean").item() == pytest.approx(sq)
    f = torch.randn(3, 4, 2, 2)
    assert attention_transfer_loss(f, f.clone()).item() == 0.0
    assert attention_transfer_loss(f, torch.cat([f, f], 1)).item() < 1e-12  # widths may differ
    with pytest.raises(ValueError, match="batch-size mismatch"):
        attention_transfer_loss(torch.rand(2, 3, 2, 2), torch.rand(3, 3, 2, 2))
    with pytest.raises(ValueError, match="student_feature must be"):
        attention_transfer_loss(torch.rand(2, 3), torch.rand(2, 3, 2, 2))


def _published_at(pairs, beta=1000.0):
    """The published recipe, written out: beta * sum over pairs of the mean over batch and
    positions of the squared difference of the L2-normalised maps mean_c(F^2), the larger map
    average-pooled to the smaller one's size first."""
    total = 0.0
    for f_s, f_t in pairs:
        h = min(f_s.shape[2], f_t.shape[2])
        f_s, f_t = F.adaptive_avg_pool2d(f_s, h), F.adaptive_avg_pool2d(f_t, h)
        q_s = f_s.pow(2).mean(1).flatten(1)
        q_t = f_t.pow(2).mean(1).flatten(1)
        q_s = q_s / q_s.norm(dim=1, keepdim=True)
        q_t = q_t / q_t.norm(dim=1, keepdim=True)
        total = total + ((q_s - q_t) ** 2).mean()
    return beta * total


def test_attention_term_default_is_the_published_recipe_and_trains(digits, teacher):
    g = torch.Generator().manual_seed(0)
    sf = {"b1": torch.rand(4, 3, 4, 4, generator=g), "b2": torch.rand(4, 5, 2, 2, generator=g)}
    tf = {"t1": torch.rand(4, 8, 4, 4, generator=g), "t2": torch.rand(4, 6, 4, 4, generator=g)}
    batch = Batch(torch.rand(4, 1), torch.zeros(4, dtype=torch.long), None, torch.rand(4, 3), None)
    batch.student_features, batch.teacher_features = sf, tf
    term = AttentionTerm([("b1", "t1"), ("b2", "t2")])
    expected = _published_at([(sf["b1"], tf["t1"]), (sf["b2"], tf["t2"])])
    # the Distiller adds weight * term(batch)
    assert term.weight * term(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > 1.0  # not a vacuous comparison
    assert term.weight == 1000.0 and term.student_features == ["b1", "b2"]
    with pytest.raises(ValueError, match="pairs"):
        AttentionTerm([])

    seed_everything(1)
    student = models.SmallCNN(width=4)
    term = AttentionTerm([("block1", "block1"), ("block2", "block2")])
    distiller = Distiller(student, teacher, alpha=0.5, terms=[term], lr=3e-3, progress=False)
    history = distiller.fit(digits.train.loader(64, shuffle=True), epochs=3)
    values = [h["train_at"] for h in history]
    assert values[-1] < 0.8 * values[0], values
