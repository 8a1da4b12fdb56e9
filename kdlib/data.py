"""Datasets for the course, as tensors that fit in memory, and fast loaders over them.

- ``load_digits()``: the embedded default, scikit-learn's bundled handwritten digits (1,797 real
  8x8 grey images, 10 classes, no download). Seeded, stratified splits: 1,000 train, 397
  validation, 400 test. Pixels scaled to [0, 1]; images shaped ``(N, 1, 8, 8)``.
- ``load_dataset(name)``: ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``.
  The torchvision ones are read from ``data/`` (or ``root``); ``download=True`` fetches them for
  users who are online; when the files are missing a ``FileNotFoundError`` says what to run.
- ``make_similar_classes()``: a synthetic dataset whose classes come in groups of look-alikes,
  so the class similarity a teacher learns can be compared with the truth.
- ``TensorLoader``: a DataLoader-like iterator over tensors (kept on the training device when
  they fit): seeded shuffling, optional batch transform (augmentation), optional sample index
  (needed by the teacher-logit cache). Much less per-step overhead than a DataLoader over a
  ``TensorDataset``, which indexes and collates one sample at a time.
- Transfer-set helpers for the classic experiments: ``few_labels`` (a labelled subset, the rest
  unlabelled with label -1) and ``omit_classes`` (a transfer set with chosen classes removed).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kdlib.losses import IGNORE_INDEX

__all__ = [
    "Split",
    "DatasetSplits",
    "TensorLoader",
    "DATASETS",
    "default_root",
    "load_digits",
    "load_dataset",
    "make_similar_classes",
    "random_shift",
    "few_labels",
    "labelled",
    "omit_classes",
    "download",
]

DIGITS_SPLIT = (1000, 397, 400)  # train, validation, test: 1,797 images in all

DATASETS = {
    # name: (torchvision class, classes, shape, per-channel mean, per-channel std)
    "mnist": ("MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", 10, (1, 28, 28), (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class Split:
    """Inputs ``x`` ``(N, ...)`` float32 and labels ``y`` ``(N,)`` int64 (-1: unlabelled)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, index) -> Split:
        index = torch.as_tensor(index, dtype=torch.long, device=self.y.device)
        return Split(self.x[index], self.y[index])

    def loader(self, batch_size: int = 64, shuffle: bool = False, **kwargs) -> TensorLoader:
        """A :class:`TensorLoader` over this split; keyword arguments go to it."""
        return TensorLoader(self.x, self.y, batch_size=batch_size, shuffle=shuffle, **kwargs)

    def dataloader(self, batch_size: int = 64, shuffle: bool = False, seed: int = 0, **kwargs):
        """A standard ``torch.utils.data.DataLoader`` over this split, yielding ``(x, y)``."""
        generator = torch.Generator().manual_seed(seed)
        dataset = torch.utils.data.TensorDataset(self.x, self.y)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs
        )


@dataclass
class DatasetSplits:
    """A dataset's train / validation / test splits and what a model needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    input_shape: tuple[int, ...]
    extra: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def in_features(self) -> int:
        return math.prod(self.input_shape)

    def to(self, device) -> DatasetSplits:
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def __repr__(self) -> str:
        return (
            f"DatasetSplits({self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, classes={self.num_classes}, input_shape={self.input_shape})"
        )


class TensorLoader:
    """Iterate over ``(x, y)`` (or ``(x, y, index)``) mini-batches of in-memory tensors.

    Args:
        x, y: tensors with the same first dimension ``N``. They stay where they are: move them
            to the GPU first (``split.to(device)``) to keep the whole epoch on the device.
        batch_size: samples per batch; the last batch may be smaller unless ``drop_last``.
        shuffle: a fresh permutation every epoch from a generator seeded with ``seed``, so the
            sequence of batches repeats exactly for the same seed.
        transform: a function applied to each batch of inputs, e.g. :func:`random_shift`
            (called as ``transform(x, generator)``). A loader with a transform is *random*:
            the teacher-logit cache refuses it.
        return_index: also yield the dataset indices of the batch, shape ``(B,)``; required
            by the teacher-logit cache, which is keyed by index.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int = 64,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        transform: Callable | None = None,
        return_index: bool = False,
    ):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        self.return_index = return_index
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    @property
    def dataset_size(self) -> int:
        return len(self.y)

    def to(self, device) -> TensorLoader:
        """This loader with ``x`` and ``y`` moved to ``device`` (one copy, then no host-device
        traffic per batch). The two share the shuffling generator: they continue one sequence
        of batches, and a checkpoint of either's generator state fits both."""
        loader = copy.copy(self)
        loader.x, loader.y = self.x.to(device), self.y.to(device)
        return loader

    shard_index, num_shards, shard_pad = 0, 1, True  # the whole epoch (see shard())

    def shard(self, index: int, count: int, pad: bool = True) -> TensorLoader:
        """This loader dealing only share ``index`` of ``count`` of each epoch, for one rank of
        a ``torch.distributed`` job: ``order[index::count]`` of the epoch's (shuffled) order,
        padded to equal shares with ``pad`` (see ``kdlib.distributed.shard_indices``). Every
        rank must use the same seed. The shard shares this loader's generator, like
        :meth:`to`; ``batch_size`` is per rank."""
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard index must be in [0, count), got index={index}, count={count}")
        loader = copy.copy(self)
        loader.shard_index, loader.num_shards, loader.shard_pad = index, count, pad
        return loader

    def __len__(self) -> int:
        n = len(self.y)
        if self.num_shards > 1:
            n = (
                math.ceil(n / self.num_shards)
                if self.shard_pad
                else len(range(self.shard_index, n, self.num_shards))
            )
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.y.device)
        else:
            order = torch.arange(n, device=self.y.device)
        gather = self.shuffle or self.num_shards > 1
        if self.num_shards > 1:
            from kdlib.distributed import shard_indices

            order = shard_indices(order, self.shard_index, self.num_shards, self.shard_pad)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if gather:  # index_select: the same gather as x[idx], at half the overhead
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            else:  # contiguous slices: views, no copy
                xb = self.x[b * self.batch_size : (b + 1) * self.batch_size]
                yb = self.y[b * self.batch_size : (b + 1) * self.batch_size]
            if self.transform is not None:
                xb = self.transform(xb, self.generator)
            yield (xb, yb, idx) if self.return_index else (xb, yb)


def random_shift(
    x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 1
) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, padding with zeros.

    ``x``: ``(N, C, H, W)``. Pixels shifted out are dropped and the vacated border is zero (the
    background of the datasets here); nothing wraps around. Each image gets its own shift,
    drawn from ``generator`` so a seeded loader repeats exactly.
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    shifts = torch.randint(0, 2 * s + 1, (2, n), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(x, (s, s, s, s))
    rows = shifts[0][:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = shifts[1][:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _stratified_splits(y: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    out = []
    rest, rest_y = index, y
    for size in sizes[:-1]:
        take, rest = train_test_split(rest, train_size=size, stratify=rest_y, random_state=seed)
        rest_y = y[rest]
        out.append(np.sort(take))
    out.append(np.sort(rest))
    return out


def load_digits(seed: int = 0, flatten: bool = False) -> DatasetSplits:
    """The embedded default dataset: scikit-learn's bundled digits, split 1000/397/400.

    The splits are stratified and fixed by ``seed`` (the same seed gives the same split on every
    machine). Images are ``(N, 1, 8, 8)`` float32 in [0, 1], or ``(N, 64)`` with ``flatten``.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    if flatten:
        images = images.flatten(1)
    train, val, test = _stratified_splits(bunch.target, DIGITS_SPLIT, seed)
    split = lambda idx: Split(images[idx], labels[idx])  # noqa: E731
    return DatasetSplits(
        name="digits",
        train=split(train),
        val=split(val),
        test=split(test),
        num_classes=10,
        class_names=[str(d) for d in range(10)],
        input_shape=tuple(images.shape[1:]),
    )


def default_root() -> Path:
    """Where datasets live: ``$KDLIB_DATA`` if set, else ``data/`` in the repository."""
    if os.environ.get("KDLIB_DATA"):
        return Path(os.environ["KDLIB_DATA"])
    return Path(__file__).resolve().parent.parent / "data"


def _missing_message(name: str, root: Path) -> str:
    return (
        f"dataset {name!r} was not found under {root}. To get it, run once on a machine with "
        f"internet access:\n    kdlib data download {name} --root {root}\n"
        f"or call load_dataset({name!r}, download=True). Offline, copy torchvision's "
        f"{DATASETS[name][0]} files into {root}. The embedded 'digits' dataset needs no download."
    )


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    import torchvision

    cls = getattr(torchvision.datasets, DATASETS[name][0])
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: "Dataset not found. You can use download=True"
        raise FileNotFoundError(_missing_message(name, root)) from err
    except OSError as err:  # download impossible (no network)
        raise FileNotFoundError(
            f"downloading {name!r} failed ({err}).\n" + _missing_message(name, root)
        ) from err


def _to_tensors(ds, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    data = ds.data
    data = torch.as_tensor(np.asarray(data))
    if data.dim() == 3:  # (N, H, W) grey
        data = data.unsqueeze(1)
    else:  # (N, H, W, C) colour
        data = data.permute(0, 3, 1, 2)
    x = data.float() / 255.0
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x = (x - mean_t) / std_t
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return x.contiguous(), y


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    val_size: int = 5000,
    limit: int | None = None,
) -> DatasetSplits:
    """Load a dataset by name into :class:`DatasetSplits`.

    ``digits`` is embedded. ``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100`` come
    through torchvision from ``root`` (default :func:`default_root`), normalised per channel;
    ``val_size`` images of the official training set are held out (seeded) for validation and
    the official test set is the test split. ``limit`` keeps only the first ``limit`` training
    images (after the validation hold-out), for quick runs.

    Raises ``FileNotFoundError`` with the command to run when the files are missing and
    ``download`` is off or impossible.
    """
    name = name.lower().replace("-", "_")
    if name == "digits":
        splits = load_digits(seed=seed)
    elif name in DATASETS:
        root = Path(root) if root is not None else default_root()
        _, num_classes, shape, mean, std = DATASETS[name]
        train_ds = _torchvision_split(name, root, train=True, download=download)
        test_ds = _torchvision_split(name, root, train=False, download=download)
        x, y = _to_tensors(train_ds, mean, std)
        x_test, y_test = _to_tensors(test_ds, mean, std)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        classes = list(getattr(train_ds, "classes", [str(i) for i in range(num_classes)]))
        splits = DatasetSplits(
            name=name,
            train=Split(x[train_idx], y[train_idx]),
            val=Split(x[val_idx], y[val_idx]),
            test=Split(x_test, y_test),
            num_classes=num_classes,
            class_names=classes,
            input_shape=shape,
        )
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from digits, {', '.join(DATASETS)}")
    if limit is not None:
        splits = replace(splits, train=splits.train.subset(torch.arange(limit)))
    return splits


def download(name: str, root: str | Path | None = None) -> Path:
    """Download a torchvision dataset into ``root`` (default ``data/``); returns the folder."""
    name = name.lower().replace("-", "_")
    if name not in DATASETS:
        raise ValueError(f"nothing to download for {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root) if root is not None else default_root()
    for train in (True, False):
        _torchvision_split(name, root, train=train, download=True)
    return root


def make_similar_classes(
    n_groups: int = 3,
    classes_per_group: int = 2,
    n_per_class: int = 200,
    dim: int = 16,
    group_spread: float = 4.0,
    class_spread: float = 1.2,
    noise: float = 1.0,
    seed: int = 0,
) -> DatasetSplits:
    """Gaussian classes that come in groups of look-alikes, with the similarity known.

    Group centres are drawn far apart (scale ``group_spread``); the classes of one group sit
    close to their group's centre (scale ``class_spread``); samples add isotropic ``noise``.
    A classifier confuses classes of the same group far more than classes of different groups:
    the "dark knowledge" a teacher's soft outputs reveal. ``extra["groups"]`` lists each
    class's group; ``extra["similarity"]`` is the ``(C, C)`` matrix of
    ``exp(-distance^2 / (4 noise^2))`` between class means.

    Splits: 60% train, 20% validation, 20% test, stratified. Inputs ``(N, dim)`` float32.
    """
    gen = torch.Generator().manual_seed(seed)
    num_classes = n_groups * classes_per_group
    group_centres = torch.randn(n_groups, dim, generator=gen) * group_spread
    groups = torch.arange(num_classes) // classes_per_group
    means = group_centres[groups] + torch.randn(num_classes, dim, generator=gen) * class_spread
    y = torch.arange(num_classes).repeat_interleave(n_per_class)
    x = means[y] + torch.randn(len(y), dim, generator=gen) * noise
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    train, val, test = _stratified_splits(y.numpy(), (n_train, n_val, 0), seed)
    distance2 = torch.cdist(means, means) ** 2
    return DatasetSplits(
        name="similar_classes",
        train=Split(x[train], y[train]),
        val=Split(x[val], y[val]),
        test=Split(x[test], y[test]),
        num_classes=num_classes,
        class_names=[f"g{g}c{c}" for g in range(n_groups) for c in range(classes_per_group)],
        input_shape=(dim,),
        extra={
            "groups": groups.tolist(),
            "means": means,
            "similarity": torch.exp(-distance2 / (4 * noise**2)),
        },
    )


def few_labels(split: Split, n_labelled: int = 100, seed: int = 0) -> Split:
    """The few-labels transfer set: keep ``n_labelled`` labels (stratified), hide the rest.

    Returns a split with the same images; the labels of all but ``n_labelled`` samples are
    replaced by ``IGNORE_INDEX`` (-1). A distiller learns from the teacher on every image and
    from the labels on the labelled ones; :func:`labelled` extracts the labelled part for the
    baseline trained on labels alone.
    """
    if not 0 < n_labelled <= len(split):
        raise ValueError(f"n_labelled must be in [1, {len(split)}], got {n_labelled}")
    y = split.y.cpu().numpy()
    if n_labelled == len(split):
        keep = np.arange(len(y))
    else:
        keep = _stratified_splits(y, (n_labelled, 0), seed)[0]
    labels = torch.full_like(split.y, IGNORE_INDEX)
    keep_t = torch.as_tensor(keep, device=split.y.device)
    labels[keep_t] = split.y[keep_t]
    return Split(split.x, labels)


def labelled(split: Split) -> Split:
    """Only the samples whose label is known (not ``IGNORE_INDEX``)."""
    return split.subset(torch.nonzero(split.y != IGNORE_INDEX).flatten())


def omit_classes(split: Split, classes: Sequence[int]) -> Split:
    """The split without any sample of ``classes`` (Hinton's omitted-digit transfer set)."""
    keep = torch.ones_like(split.y, dtype=torch.bool)
    for c in classes:
        keep &= split.y != c
    return split.subset(torch.nonzero(keep).flatten())
