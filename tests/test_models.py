"""The model families: shapes, features, sizes."""

import pytest
import torch

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
