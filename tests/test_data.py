"""The embedded digits, the transfer-set helpers, the loaders and the torchvision path."""

import pytest
import torch

from kdlib import data
from kdlib.losses import IGNORE_INDEX


def test_digits_splits_are_real_seeded_and_disjoint():
    a, b = data.load_digits(seed=0), data.load_digits(seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (1000, 397, 400)
    assert a.train.x.shape == (1000, 1, 8, 8) and a.input_shape == (1, 8, 8)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert 0.0 <= a.train.x.min() and a.train.x.max() <= 1.0
    # every class in every split, roughly balanced (stratified)
    for split in (a.train, a.val, a.test):
        counts = torch.bincount(split.y, minlength=10)
        assert counts.min() > 0.8 * counts.float().mean()
    # no image appears in two splits
    rows = lambda s: {tuple(r.tolist()) for r in s.x.flatten(1)}
    assert not rows(a.train) & rows(a.test)
    c = data.load_digits(seed=1)
    assert not torch.equal(a.train.y, c.train.y)


def test_tensor_loader_covers_every_sample_and_repeats_with_seed():
    split = data.load_digits().train
    loader = split.loader(batch_size=64, shuffle=True, seed=3, return_index=True)
    assert len(loader) == 16
    seen = torch.cat([idx for _, _, idx in loader])
    assert torch.equal(seen.sort().values, torch.arange(1000))
    for x, y, idx in loader:
        assert torch.equal(x, split.x[idx]) and torch.equal(y, split.y[idx])
    first = [y for _, y, _ in split.loader(64, shuffle=True, seed=3, return_index=True)]
    again = [y for _, y, _ in split.loader(64, shuffle=True, seed=3, return_index=True)]
    assert all(torch.equal(u, v) for u, v in zip(first, again))
    assert len(split.loader(300, drop_last=True)) == 3


def test_random_shift_pads_instead_of_wrapping():
    x = torch.zeros(200, 1, 8, 8)
    x[:, :, :, -1] = 1.0  # a bright right-most column
    shifted = data.random_shift(x, torch.Generator().manual_seed(0), max_shift=1)
    assert shifted.shape == x.shape
    # shifted right by one: the column falls off the edge, nothing wraps to column 0
    assert shifted[:, :, :, 0].sum() == 0
    assert (shifted.sum(dim=(1, 2, 3)) < x.sum(dim=(1, 2, 3))).any()
    kept = shifted.flatten(1).sum(1)
    assert set(kept.tolist()) <= {0.0, 7.0, 8.0}


def test_few_labels_hides_all_but_n_labels():
    train = data.load_digits().train
    fl = data.few_labels(train, 100, seed=0)
    assert torch.equal(fl.x, train.x)
    known = fl.y != IGNORE_INDEX
    assert int(known.sum()) == 100
    assert torch.equal(fl.y[known], train.y[known])
    assert torch.bincount(fl.y[known], minlength=10).min() >= 9
    lab = data.labelled(fl)
    assert len(lab) == 100 and (lab.y >= 0).all()
    with pytest.raises(ValueError, match="n_labelled"):
        data.few_labels(train, 0)


def test_omit_classes_removes_them():
    train = data.load_digits().train
    no3 = data.omit_classes(train, [3])
    assert (no3.y != 3).all() and len(no3) == len(train) - int((train.y == 3).sum())


def test_similar_classes_have_known_structure():
    ds = data.make_similar_classes(n_groups=3, classes_per_group=2, seed=0)
    sim = ds.extra["similarity"]
    groups = torch.tensor(ds.extra["groups"])
    same = groups[:, None] == groups[None, :]
    off_diag = ~torch.eye(len(groups), dtype=torch.bool)
    assert sim[same & off_diag].min() > sim[~same].max()
    assert ds.num_classes == 6 and ds.train.x.shape[1] == 16


def test_missing_torchvision_dataset_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="kdlib data download mnist"):
        data.load_dataset("mnist", root=tmp_path, download=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet")


def test_torchvision_dataset_read_from_root(tmp_path, monkeypatch):
    """A CIFAR-10 folder in torchvision's format (written here) is read without download."""
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def batch(n):
        return {
            "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(batch(20), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    import torchvision.datasets.cifar as cifar

    # torchvision checks the md5 sums of the official files; these are made-up ones
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    ds = data.load_dataset("cifar10", root=tmp_path, val_size=30)
    assert ds.train.x.shape == (70, 3, 32, 32) and len(ds.val) == 30 and len(ds.test) == 20
    assert ds.num_classes == 10 and ds.class_names[0] == "c0"
