"""The vision transformer and DeiT's distillation token (kdlib.vit)."""

import pytest
import torch
import torch.nn.functional as F

from kdlib.data import load_digits
from kdlib.features import FeatureTaps, hint_loss, make_adapter
from kdlib.losses import soft_loss
from kdlib.models import SmallCNN
from kdlib.population import distill_population
from kdlib.runtime import seed_everything
from kdlib.vit import ViT, deit_loss


def test_shapes_and_heads_in_both_modes():
    x = torch.randn(5, 1, 8, 8)
    plain = ViT(patch_size=2)
    assert plain.num_patches == 16 and plain.pos_embed.shape == (1, 17, 32)
    assert plain(x).shape == (5, 10) and plain.eval()(x).shape == (5, 10)
    deit = ViT(patch_size=2, distillation=True)
    assert deit.pos_embed.shape == (1, 18, 32)
    heads = deit.train()(x)
    assert heads.shape == (5, 2, 10)  # training mode: the class and distillation heads
    deit.eval()
    with torch.no_grad():
        both = deit(x, return_heads=True)
        # eval mode: the two heads averaged, as DeiT tests
        assert torch.allclose(deit(x), both.mean(dim=1), atol=1e-6)
        assert not torch.allclose(both[:, 0], both[:, 1])  # two different heads


def test_features_are_the_hidden_states_and_taps_see_them():
    model = ViT(depth=3, distillation=True).eval()
    x = torch.randn(2, 1, 8, 8)
    logits, features = model(x, return_features=True)
    names = ["block1", "block2", "block3", "grid"]
    assert list(features) == names == list(model.feature_names)
    assert features["block3"].shape == (2, 2 + 4, 32)
    # the grid is the last hidden state's patch tokens, token (i, j) at pixel (i, j) of the map
    assert features["grid"].shape == (2, 32, 2, 2)
    assert torch.equal(features["grid"][1, :, 1, 0], features["block3"][1, 2 + 2])
    assert torch.equal(features["grid"], model.patch_map(features["block3"]))
    with FeatureTaps(model, ["block2", "grid"]) as taps:
        model(x)
        assert torch.allclose(taps["block2"], features["block2"])
        assert torch.allclose(taps["grid"], features["grid"])


def test_the_class_token_sees_every_patch():
    """Attention is not masked: a change in the last patch moves the class token's logits."""
    model = ViT(patch_size=2).eval()
    x = torch.randn(1, 1, 8, 8)
    y = x.clone()
    y[..., 6:, 6:] += 1.0
    with torch.no_grad():
        assert (model(x) - model(y)).abs().max() > 1e-4


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="patch_size"):
        ViT(image_size=8, patch_size=3)
    with pytest.raises(ValueError, match="heads"):
        ViT(dim=30, heads=4)
    with pytest.raises(ValueError, match="depth"):
        ViT(depth=0)
    with pytest.raises(ValueError, match="image_size"):
        ViT()(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        ViT()(torch.randn(1, 64))


def _logits(seed=0, n=6, c=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g) for _ in range(3)], torch.randint(
        0, c, (n,), generator=g
    )


def test_deit_hard_loss_by_hand():
    (zc, zd, zt), y = _logits()
    expected = 0.5 * F.cross_entropy(zc, y) + 0.5 * F.cross_entropy(zd, zt.argmax(1))
    assert torch.allclose(deit_loss(zc, zd, zt, y, "hard"), expected, atol=1e-6)
    # alpha = 0: the class head and the labels only; alpha = 1: the teacher's labels only
    assert torch.allclose(deit_loss(zc, zd, zt, y, "hard", alpha=0.0), F.cross_entropy(zc, y))
    assert torch.allclose(
        deit_loss(zc, zd, zt, y, "hard", alpha=1.0), F.cross_entropy(zd, zt.argmax(1))
    )


def test_deit_soft_loss_by_hand():
    (zc, zd, zt), y = _logits(1)
    tau, a = 3.0, 0.1
    kl = (
        F.kl_div(F.log_softmax(zd / tau, 1), F.softmax(zt / tau, 1), reduction="batchmean") * tau**2
    )
    expected = (1 - a) * F.cross_entropy(zc, y) + a * kl
    got = deit_loss(zc, zd, zt, y, "soft", temperature=tau, alpha=a)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got, (1 - a) * F.cross_entropy(zc, y) + a * soft_loss(zd, zt, tau))


def test_deit_gradients_reach_each_head_from_its_own_target_only():
    (zc, zd, zt), y = _logits(2)
    zc, zd, zt = (z.clone().requires_grad_(True) for z in (zc, zd, zt))
    deit_loss(zc, zd, zt, y, "hard").backward()
    assert zt.grad is None  # the teacher gets no gradient
    # the distillation head's gradient is the softmax minus the teacher's one-hot label
    expected = 0.5 * (F.softmax(zd, 1) - F.one_hot(zt.argmax(1), 5)) / len(y)
    assert torch.allclose(zd.grad, expected.detach(), atol=1e-6)
    # unlabelled samples (-1) drop out of the class head's term, not of the teacher's
    y2 = y.clone()
    y2[0] = -1
    zc2 = zc.detach().clone().requires_grad_(True)
    zd2 = zd.detach().clone().requires_grad_(True)
    deit_loss(zc2, zd2, zt.detach(), y2, "hard").backward()
    assert torch.all(zc2.grad[0] == 0) and torch.any(zd2.grad[0] != 0)


def test_deit_check_false_is_the_same_formula():
    (zc, zd, zt), y = _logits(3)
    for kind in ("hard", "soft"):
        assert torch.equal(
            deit_loss(zc, zd, zt, y, kind), deit_loss(zc, zd, zt, y, kind, check=False)
        )


def test_deit_bad_input_is_named():
    (zc, zd, zt), y = _logits(4)
    with pytest.raises(ValueError, match="kind"):
        deit_loss(zc, zd, zt, y, "medium")
    with pytest.raises(ValueError, match="distill_logits"):
        deit_loss(zc, zd[:, :3], zt, y)
    with pytest.raises(ValueError, match="teacher_logits"):
        deit_loss(zc, zd, zt[:4], y)
    with pytest.raises(ValueError, match="temperature"):
        deit_loss(zc, zd, zt, y, "soft", temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        deit_loss(zc, zd, zt, y, alpha=1.5)
    with pytest.raises(ValueError, match="labels"):
        deit_loss(zc, zd, zt, y.float())


def test_deit_student_learns_the_teacher_through_the_token():
    """A population trained with the hard DeiT loss: its distillation head reproduces the
    teacher's labels on the training images better than chance, and eval mode averages."""
    digits = load_digits()
    seed_everything(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    loader = digits.train.loader(128, shuffle=True, seed=0)
    pop = distill_population(
        lambda: ViT(distillation=True),
        [0, 1],
        teacher,
        loader,
        epochs=4,
        loss=lambda z, t, y: deit_loss(z[:, 0], z[:, 1], t, y, "hard", check=False),
        lr=5e-3,
        device="cpu",
    )
    student = pop.member(0).eval()
    with torch.no_grad():
        heads = student(digits.train.x, return_heads=True)
        t = teacher(digits.train.x).argmax(1)
    agree_dist = (heads[:, 1].argmax(1) == t).float().mean()
    agree_labels = (heads[:, 0].argmax(1) == digits.train.y).float().mean()
    assert agree_dist > 0.3 and agree_labels > 0.3  # chance is 0.1


def test_patch_map_feeds_the_fitnets_hint_from_a_cnn_teacher():
    """Feature distillation of hidden states: a ViT's patch tokens as a map, hinted by a CNN."""
    torch.manual_seed(0)
    student = ViT(patch_size=2, distillation=True)  # a 4x4 grid of patches
    teacher = SmallCNN(1, 10, width=8, depth=2, image_size=8).eval()
    x = torch.randn(3, 1, 8, 8)
    _, hidden = student(x, return_features=True)
    h = hidden["block2"]  # (3, 2 + 16, 32)
    grid = student.patch_map(h)
    assert grid.shape == (3, 32, 4, 4)
    # token (i, j) of the grid is the patch at row i, column j
    assert torch.equal(grid[:, :, 1, 2], h[:, 2 + 1 * 4 + 2])
    _, t_features = teacher(x, return_features=True)
    t_map = t_features["block2"]  # (3, 16, 2, 2)
    adapter = make_adapter(32, 16)
    loss = hint_loss(grid, t_map, adapter)
    loss.backward()
    assert loss > 0 and student.block1.attn.qkv.weight.grad is not None
    assert student.head.weight.grad is None  # a hidden-state loss does not reach the heads
    with pytest.raises(ValueError, match="hidden"):
        student.patch_map(torch.randn(3, 17, 32))
