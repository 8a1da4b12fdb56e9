"""The model families: shapes, features, sizes."""

import pytest
import torch
import torch.nn.functional as F

from kdlib import models


@pytest.mark.parametrize(
    "make, x",
    [
        (lambda: models.MLP(64, (32,), 10), torch.randn(4, 1, 8, 8)),
        (lambda: models.SmallCNN(1, 10, width=8, depth=3), torch.randn(4, 1, 8, 8)),
        (lambda: models.resnet8(100), torch.randn(2, 3, 32, 32)),
        (lambda: models.resnet8x4(100), torch.randn(2, 3, 32, 32)),
        (lambda: models.resnet20(10, in_channels=1), torch.randn(2, 1, 8, 8)),
    ],
)
def test_logits_and_named_features(make, x):
    model = make()
    logits, feats = model(x, return_features=True)
    assert logits.shape[0] == x.shape[0]
    assert list(feats) == list(model.feature_names)
    assert torch.equal(model.eval()(x), model(x))


def test_resnet_shapes_and_sizes():
    r = models.resnet32x4(100)
    _, feats = r(torch.randn(2, 3, 32, 32), return_features=True)
    assert feats["layer1"].shape == (2, 64, 32, 32)
    assert feats["layer3"].shape == (2, 256, 8, 8)
    assert feats["pool"].shape == (2, 256)
    # the published sizes: resnet8x4 ~1.2M, resnet32x4 ~7.4M, resnet56 ~0.86M, resnet20 ~0.28M
    assert 1.1e6 < models.count_parameters(models.resnet8x4()) < 1.3e6
    assert 7.3e6 < models.count_parameters(r) < 7.5e6
    assert 0.85e6 < models.count_parameters(models.resnet56()) < 0.88e6
    assert 0.27e6 < models.count_parameters(models.resnet20()) < 0.29e6
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.CifarResNet(depth=10)


def test_count_parameters_and_size():
    mlp = models.MLP(64, (32,), 10)
    assert models.count_parameters(mlp) == 64 * 32 + 32 + 32 * 10 + 10
    assert models.model_size_bytes(mlp) == 4 * models.count_parameters(mlp)
    mlp.fc1[0].weight.requires_grad_(False)
    assert models.count_parameters(mlp, trainable_only=True) == 32 + 32 * 10 + 10


def _pool_input(shape, seed=0):
    """ReLU outputs with the ties of a blank background and a NaN: where kernels disagree."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=g))
    x[:, :, : shape[2] // 2, : shape[3] // 2] = 0.5  # whole windows of equal values
    x[0, 0, 1, 1] = float("nan")
    x[-1, -1, -1, -1] = 0.0
    return x


@pytest.mark.parametrize("shape", [(3, 5, 8, 8), (2, 64, 4, 4), (2, 3, 7, 7), (1, 2, 6, 9)])
def test_max_pool2x2_equals_max_pool2d_in_values_and_gradients(shape):
    """The channels-last pool SmallCNN uses on the CPU returns what F.max_pool2d returns, and
    sends each window's gradient to the same pixel (the first maximum; ties and NaN included),
    odd sizes too: the population's members stay equal to their seeds alone."""
    x = _pool_input(shape)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ref, out = torch.nn.functional.max_pool2d(a, 2), models.max_pool2x2(b)
    assert out.is_contiguous() and out.shape == ref.shape
    assert torch.equal(ref.nan_to_num(-1.0), out.nan_to_num(-1.0))
    ref.backward(grad)
    out.backward(grad)
    assert torch.equal(a.grad, b.grad)
    assert b.grad.is_contiguous()
    with torch.no_grad():
        assert torch.equal(models.max_pool2x2(x).nan_to_num(-1.0), ref.detach().nan_to_num(-1.0))


def test_max_pool2x2_takes_the_channels_last_kernel_only_in_plain_eager_use(monkeypatch):
    """vmap, torch.func.grad, torch.export and non-contiguous inputs get F.max_pool2d itself;
    the results agree either way."""
    calls = []
    original = models._ChannelsLastMaxPool.apply
    monkeypatch.setattr(
        models._ChannelsLastMaxPool, "apply", lambda x: calls.append(1) or original(x)
    )
    x = _pool_input((4, 3, 8, 8))
    models.max_pool2x2(x)
    assert len(calls) == 1
    out = torch.func.vmap(models.max_pool2x2)(torch.stack([x, x + 1]))
    assert torch.equal(out[1].nan_to_num(-1.0), models.max_pool2x2(x + 1).nan_to_num(-1.0))
    assert len(calls) == 2  # the plain call, not vmap's
    g = torch.func.grad(lambda t: models.max_pool2x2(t).nan_to_num(0.0).sum())(x)
    assert torch.equal(g, torch.func.grad(lambda t: F.max_pool2d(t, 2).nan_to_num(0.0).sum())(x))
    models.max_pool2x2(x.transpose(2, 3))  # not contiguous
    model = models.SmallCNN(1, 10, width=4, depth=2).eval()
    program = torch.export.export(model, (torch.randn(2, 1, 8, 8),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("aten.max_pool2d.default") == 2
    assert len(calls) == 2
