"""The teacher cache: train once, load after; a new key trains again; a bad file is rebuilt.

Every test uses its own cache folder and a two-epoch MLP on the digits (well under a second).
"No training" is checked by counting optimizer steps with a global step hook.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from kdlib import teacher_cache
from kdlib.data import random_shift
from kdlib.models import MLP, SmallCNN
from kdlib.teacher_cache import TeacherCacheWarning, train_teacher


@contextlib.contextmanager
def count_optimizer_steps():
    """Counts every ``optimizer.step()`` taken inside the block, whatever the optimizer."""
    steps = [0]

    def hook(optimizer, args, kwargs):
        steps[0] += 1

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def build(hidden=16):
    return lambda: MLP(64, (hidden,), 10)


@pytest.fixture
def request_teacher(digits, tmp_path):
    def request(cache=tmp_path, hidden=16, epochs=2, lr=3e-3, seed=0, **options):
        loader = digits.train.loader(64, shuffle=True, seed=0)
        return train_teacher(
            build(hidden),
            loader,
            epochs,
            seed=seed,
            lr=lr,
            device="cpu",
            progress=False,
            cache=cache,
            **options,
        )

    return request


def weights(model):
    return [t.detach().clone() for t in model.state_dict().values()]


def test_second_request_loads_without_training(request_teacher, tmp_path, digits):
    with count_optimizer_steps() as steps:
        first = request_teacher()
    assert steps[0] == 2 * len(digits.train.loader(64))  # it trained: 2 epochs of 16 batches
    assert not first.from_cache and first.path is not None and first.path.parent == tmp_path
    with count_optimizer_steps() as steps:
        second = request_teacher()
    assert steps[0] == 0, "the cached teacher was trained again"
    assert second.from_cache and second.path == first.path
    for a, b in zip(weights(first.model), weights(second.model), strict=True):
        assert torch.equal(a, b)
    assert second.history == first.history and second.seconds == first.seconds
    # a loader shared with a student continues where training left it, cached or not
    shared = digits.train.loader(64, shuffle=True, seed=0)
    train_teacher(build(), shared, 2, seed=0, lr=3e-3, device="cpu", cache=tmp_path)
    assert torch.equal(shared.generator.get_state(), first.loader_state)
    assert not torch.equal(
        first.loader_state, digits.train.loader(64, seed=0).generator.get_state()
    )
    # the loaded teacher predicts what the trained one does
    x = digits.test.x[:32]
    first.model.eval(), second.model.eval()
    assert torch.equal(first.model(x), second.model(x))


@pytest.mark.parametrize(
    "change",
    [
        {"epochs": 3},
        {"lr": 1e-3},
        {"seed": 1},  # another initialisation
        {"hidden": 17},  # another architecture
        {"lr_schedule": "cosine"},
        {"weight_decay": 1e-4},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_changed_key_trains_again(request_teacher, change):
    first = request_teacher()
    with count_optimizer_steps() as steps:
        other = request_teacher(**change)
    assert steps[0] > 0 and not other.from_cache
    assert other.key != first.key and other.path != first.path
    # and the first key still loads
    with count_optimizer_steps() as steps:
        assert request_teacher().from_cache
    assert steps[0] == 0


def test_other_data_is_another_key(digits, tmp_path):
    def request(loader):
        return train_teacher(
            build(), loader, 1, seed=0, device="cpu", progress=False, cache=tmp_path
        )

    base = request(digits.train.loader(64, shuffle=True, seed=0))
    for loader in (
        digits.train.loader(64, shuffle=True, seed=1),  # other shuffling
        digits.train.loader(32, shuffle=True, seed=0),  # other batches
        digits.train.loader(64, shuffle=True, seed=0, transform=random_shift),  # augmentation
        digits.val.loader(64, shuffle=True, seed=0),  # other images
    ):
        assert not request(loader).from_cache
    assert request(digits.train.loader(64, shuffle=True, seed=0)).key == base.key


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupted_file_is_rebuilt_with_a_warning(request_teacher, damage):
    first = request_teacher()
    blob = bytearray(first.path.read_bytes())
    if damage == "flip":
        blob[-100] ^= 0xFF
    elif damage == "truncate":
        blob = blob[: len(blob) // 2]
    else:
        blob = bytearray(b"not a teacher at all")
    first.path.write_bytes(bytes(blob))
    with pytest.warns(TeacherCacheWarning, match="corrupted"):
        with count_optimizer_steps() as steps:
            rebuilt = request_teacher()
    assert steps[0] > 0 and not rebuilt.from_cache
    for a, b in zip(weights(first.model), weights(rebuilt.model), strict=True):
        assert torch.equal(a, b)  # same key, same training on the CPU: the same weights
    with count_optimizer_steps() as steps:
        assert request_teacher().from_cache  # and the rewritten file is good again
    assert steps[0] == 0


def test_snapshots_are_kept_and_loaded(request_teacher):
    first = request_teacher(epochs=3, snapshots=(1, 2))
    assert sorted(first.snapshots) == [1, 2]
    assert not any(m.training for m in first.snapshots.values())
    again = request_teacher(epochs=3, snapshots=(1,))
    assert again.from_cache
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights(first.snapshots[1]), weights(again.snapshots[1]), strict=True)
    )
    with pytest.raises(ValueError, match="snapshots"):
        request_teacher(epochs=3, snapshots=(3,))


def test_cache_off_and_refresh(request_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLIB_CACHE", str(tmp_path / "env"))
    assert teacher_cache.cache_dir() == tmp_path / "env" / "teachers"
    stored = request_teacher(cache=True)
    assert stored.path.parent == tmp_path / "env" / "teachers"
    assert request_teacher(cache=True).from_cache
    with count_optimizer_steps() as steps:
        refreshed = request_teacher(cache="refresh")  # trains in front of the reader, stores
    assert steps[0] > 0 and not refreshed.from_cache and refreshed.path == stored.path
    assert not request_teacher(cache=False).from_cache
    monkeypatch.setenv("KDLIB_CACHE", "off")
    assert teacher_cache.cache_dir() is None
    assert request_teacher(cache=True).path is None


def test_bad_requests_are_refused(request_teacher, digits):
    with pytest.raises(ValueError, match="lr_schedule"):
        request_teacher(lr_schedule="step")
    with pytest.raises(ValueError, match="epochs"):
        request_teacher(epochs=0)
    shifted = digits.train.loader(64, transform=lambda x, g: x)
    with pytest.raises(ValueError, match="lambda"):
        train_teacher(build(), shifted, 1, seed=0, device="cpu", progress=False)


def test_a_batchnorm_cnn_round_trips(digits, tmp_path):
    """BatchNorm's running statistics and its 0-d batch counter are stored and loaded too."""

    def request():
        return train_teacher(
            lambda: SmallCNN(width=4, depth=2),
            digits.train.loader(64),
            1,
            seed=0,
            device="cpu",
            progress=False,
            cache=tmp_path,
        )

    first, second = request(), request()
    assert second.from_cache
    for (name, a), b in zip(first.model.state_dict().items(), weights(second.model), strict=True):
        assert torch.equal(a, b), name
