"""Born-again networks: each generation is taught by the previous one, not by the data alone."""

import pytest
import torch

import kdlib.self_distill as self_distill
from kdlib.data import Split, load_digits
from kdlib.distill import train_supervised
from kdlib.metrics import accuracy, predict
from kdlib.models import MLP
from kdlib.runtime import seed_everything
from kdlib.self_distill import born_again, ensemble_predictions


@pytest.fixture(scope="module")
def data():
    return load_digits()


def _loader(split, seed=0):
    return split.loader(batch_size=100, shuffle=True, seed=seed)


def test_each_generation_is_taught_by_the_previous_one(data, monkeypatch):
    seen = []

    class SpyDistiller(self_distill.Distiller):
        def __init__(self, student, teacher=None, **kwargs):
            seen.append((student, teacher, kwargs["temperature"], kwargs["alpha"]))
            super().__init__(student, teacher, **kwargs)

    monkeypatch.setattr(self_distill, "Distiller", SpyDistiller)
    gens = born_again(
        lambda: MLP(hidden=(16,)),
        _loader(data.train),
        generations=3,
        epochs=1,
        temperature=3.0,
        alpha=0.25,
        lr=1e-2,
        seed=0,
        device="cpu",
        progress=False,
    )
    assert len(gens) == 3
    # generation 0 trained on labels (no Distiller with a teacher), then one per generation
    assert len(seen) == 2
    for k, (student, teacher, tau, alpha) in enumerate(seen, start=1):
        assert student is gens[k].model
        assert teacher is gens[k - 1].model
        assert (tau, alpha) == (3.0, 0.25)
    assert len({id(g.model) for g in gens}) == 3


def test_generation_two_learns_from_generation_one_not_from_the_labels(data):
    """A teacher that calls every digit d "d + 1": with alpha = 0 every generation inherits the
    shifted naming through the chain. Learning from the labels would name digits correctly."""
    seed_everything(0)
    shifted = Split(data.train.x, (data.train.y + 1) % 10)
    teacher = MLP(hidden=(64,))
    train_supervised(teacher, _loader(shifted), epochs=8, lr=1e-2, device="cpu", progress=False)
    gens = born_again(
        lambda: MLP(hidden=(32,)),
        _loader(data.train),
        generations=3,
        epochs=8,
        teacher=teacher,
        temperature=2.0,
        alpha=0.0,
        lr=1e-2,
        seed=1,
        device="cpu",
        progress=False,
    )
    logits, y = predict(gens[2].model, data.val)
    assert accuracy(logits, (y + 1) % 10) > 0.8
    assert accuracy(logits, y) < 0.2
    # and the same chain with the labels switched on (alpha = 1) learns the true names
    plain = born_again(
        lambda: MLP(hidden=(32,)),
        _loader(data.train),
        generations=2,
        epochs=8,
        teacher=teacher,
        alpha=1.0,
        lr=1e-2,
        seed=1,
        device="cpu",
        progress=False,
    )
    logits, y = predict(plain[1].model, data.val)
    assert accuracy(logits, y) > 0.8


def test_every_generation_lowers_its_loss_and_the_chain_can_shrink(data):
    widths = (64, 32, 16)
    makers = [lambda w=w: MLP(hidden=(w,)) for w in widths]
    gens = born_again(
        makers,
        _loader(data.train),
        generations=3,
        epochs=4,
        val_loader=data.val,
        alpha=0.5,
        lr=1e-2,
        seed=0,
        device="cpu",
        progress=False,
    )
    assert [g.model.hidden for g in gens] == [(w,) for w in widths]
    for g in gens:
        assert len(g.history) == 4
        assert g.history[-1]["train_loss"] < g.history[0]["train_loss"]
        assert g.history[-1]["val_accuracy"] > 0.7
    assert "train_soft" in gens[1].history[-1] and "train_soft" not in gens[0].history[-1]


def test_ensemble_predictions_average_the_probabilities(data):
    seed_everything(0)
    models = [MLP(hidden=(8,)) for _ in range(3)]
    log_p, labels = ensemble_predictions(models, data.val)
    probs = torch.stack([torch.softmax(predict(m, data.val)[0], 1) for m in models]).mean(0)
    assert torch.allclose(log_p.exp(), probs, atol=1e-6)
    assert torch.equal(labels, data.val.y)


def test_errors_say_what_is_wrong(data):
    with pytest.raises(ValueError, match="generations must be >= 1"):
        born_again(lambda: MLP(), _loader(data.train), generations=0)
    with pytest.raises(ValueError, match="list of 3 callables"):
        born_again([lambda: MLP()] * 2, _loader(data.train), generations=3)
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_predictions([], data.val)
