"""Datasets for the course, as tensors that fit in memory, and fast loaders over them.

- ``load_digits()``: the embedded default, scikit-learn's bundled handwritten digits (1,797 real
  8x8 grey images, 10 classes, no download). Seeded, stratified splits: 1,000 train, 397
  validation, 400 test. Pixels scaled to [0, 1]; images shaped ``(N, 1, 8, 8)``.
- ``load_dataset(name)``: ``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``.
  The others are read from torchvision's files in ``data/`` (or ``root``); ``download=True``
  fetches them for users who are online; when files are missing a ``FileNotFoundError`` names
  the files expected and those found, and says what to run. A folder with only the test files
  loads its test split.
- ``from_arrays(x, y)``: your own data (numpy arrays or tensors) as the same
  :class:`DatasetSplits`, split by :func:`stratified_split` and normalised with the training
  split's statistics.
- ``make_similar_classes()``: a synthetic dataset whose classes come in groups of look-alikes,
  so the class similarity a teacher learns can be compared with the truth.
- ``TensorLoader``: a DataLoader-like iterator over tensors (kept on the training device when
  they fit): seeded shuffling, optional batch transform (augmentation), optional sample index
  (needed by the teacher-logit cache). Much less per-step overhead than a DataLoader over a
  ``TensorDataset``, which indexes and collates one sample at a time.
- Transfer-set helpers for the classic experiments: ``few_labels`` (a labelled subset, in
  proportion or ``per_class``, the rest unlabelled with label -1) and ``omit_classes`` (a
  transfer set with chosen classes removed).
"""

from __future__ import annotations

import copy
import gzip
import math
import os
import pickle
import warnings
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
    "from_arrays",
    "stratified_split",
    "make_similar_classes",
    "random_shift",
    "few_labels",
    "labelled",
    "omit_classes",
    "download",
    "as_batches",
    "on_device",
    "tensor_pair",
    "training_loader",
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

    def __repr__(self) -> str:
        labelled = int((self.y != IGNORE_INDEX).sum()) if len(self.y) else 0
        return (
            f"Split(x={tuple(self.x.shape)} {self.x.dtype}, y={tuple(self.y.shape)} "
            f"{self.y.dtype}, labelled={labelled}, device={self.x.device})"
        )

    def to(self, device) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, index) -> Split:
        index = torch.as_tensor(index, dtype=torch.long, device=self.y.device)
        return Split(self.x[index], self.y[index])

    def loader(self, batch_size: int = 64, shuffle: bool = False, **kwargs) -> TensorLoader:
        """A :class:`TensorLoader` over this split; keyword arguments go to it."""
        return TensorLoader(self.x, self.y, batch_size=batch_size, shuffle=shuffle, **kwargs)

    def dataloader(
        self, batch_size: int = 64, shuffle: bool = False, seed: int | None = None, **kwargs
    ):
        """A standard ``torch.utils.data.DataLoader`` over this split, yielding ``(x, y)``;
        ``seed`` as in :class:`TensorLoader` (default: ``torch.initial_seed()``)."""
        generator = torch.Generator().manual_seed(_loader_seed(seed))
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
            sequence of batches repeats exactly for the same seed. ``seed=None`` (default)
            takes ``torch.initial_seed()``, the seed of ``torch.manual_seed`` (and so of
            ``kdlib.runtime.seed_everything``): two seeds give two orders.
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
        seed: int | None = None,
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
        self.generator = torch.Generator(device="cpu").manual_seed(_loader_seed(seed))

    def __repr__(self) -> str:
        return (
            f"TensorLoader({len(self.y)} samples, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, return_index={self.return_index})"
        )

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


def _loader_seed(seed: int | None) -> int:
    """``seed``, or for ``None`` the seed of PyTorch's default generator (what
    ``torch.manual_seed`` last set), so that seeding everything reaches the shuffles."""
    if seed is None:
        return torch.initial_seed()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")
    return int(seed)


def tensor_pair(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x, y)`` as tensors when ``data`` is a :class:`Split` or an ``(x, y)`` pair of tensors
    or numpy arrays (floating inputs made float32, integer labels int64; a read-only array is
    copied), else None (a loader)."""
    if isinstance(data, Split):
        return data.x, data.y
    kinds = (torch.Tensor, np.ndarray)
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], kinds)):
        return None
    x, y = data
    if isinstance(x, np.ndarray):
        x = _as_tensor(x, "x")
        if isinstance(x, np.ndarray):  # strings
            raise ValueError(f"x must be numeric, got dtype {x.dtype}")
        x = x.float() if x.is_floating_point() else x
    if isinstance(y, np.ndarray):
        y = _as_tensor(y, "y")
        if isinstance(y, np.ndarray) or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = y.long()
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    return x, y


def as_batches(data, batch_size: int = 512):
    """Yield ``(x, y)`` from ``data``: a loader yielding ``(x, y[, index])``, or a
    :class:`Split` or an ``(x, y)`` pair (tensors or numpy arrays, see :func:`tensor_pair`),
    in order, ``batch_size`` at a time."""
    pair = tensor_pair(data)
    if pair is not None:
        x, y = pair
        data = [
            (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)
        ]
    for batch in data:
        yield batch[0], batch[1]


def training_loader(data, batch_size: int = 64, return_index: bool = False):
    """What a training loop iterates over: ``data`` itself when it is a loader, else a
    shuffling :class:`TensorLoader` (``seed=None``: see there) over a :class:`Split` or an
    ``(x, y)`` pair (see :func:`tensor_pair`), with ``batch_size`` and ``return_index``."""
    pair = tensor_pair(data)
    if pair is not None:
        return TensorLoader(*pair, batch_size=batch_size, shuffle=True, return_index=return_index)
    if not hasattr(data, "__iter__"):
        raise ValueError(
            f"the training data must be a loader, a kdlib.data.Split or an (x, y) pair, got "
            f"{type(data).__name__}"
        )
    return data


def on_device(loader, device: torch.device):
    """``loader``, or on CUDA a :class:`TensorLoader` over host tensors moved to ``device``
    once (:meth:`TensorLoader.to`) when they take at most a quarter of the free memory: no
    host-device copy per batch."""
    device = torch.device(device)
    if device.type != "cuda" or not isinstance(loader, TensorLoader) or loader.x.is_cuda:
        return loader
    free, _ = torch.cuda.mem_get_info(device)
    return loader if loader.x.nbytes + loader.y.nbytes > free // 4 else loader.to(device)


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
    """Index arrays of splits of sizes ``sizes[:-1]``, the last split taking the rest."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    out = []
    rest, rest_y = index, y
    for size in sizes[:-1]:
        if size == 0:
            out.append(index[:0])
            continue
        if size == len(rest):
            out.append(np.sort(rest))
            rest, rest_y = index[:0], y[:0]
            continue
        take, rest = train_test_split(rest, train_size=size, stratify=rest_y, random_state=seed)
        rest_y = y[rest]
        out.append(np.sort(take))
    out.append(np.sort(rest))
    return out


def stratified_split(
    labels, sizes: Sequence[int | float | None], seed: int = 0
) -> list[torch.Tensor]:
    """Disjoint, seeded splits of the samples, each with the class proportions of ``labels``.

    Args:
        labels: ``(N,)`` class labels (numpy array, tensor or list).
        sizes: one entry per split: a count (int), a fraction of ``N`` (float in [0, 1]) or, for
            the last entry only, ``None`` for "all the rest". Counts must add up to at most
            ``N``; without a ``None``, samples left over belong to no split.
        seed: the same seed gives the same splits on every machine.

    Returns:
        One sorted int64 index tensor per split. ``load_digits`` and :func:`from_arrays`
        split this way (scikit-learn's ``train_test_split(stratify=...)``, one split at a
        time). A stratified split needs at least 2 samples of every class in what remains at
        each step; a ``ValueError`` says so otherwise.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one label per sample, shape (N,), got {y.shape}")
    n = len(y)
    sizes = list(sizes)
    if not sizes:
        raise ValueError("sizes must name at least one split")
    counts = []
    for k, size in enumerate(sizes):
        if size is None:
            if k != len(sizes) - 1:
                raise ValueError("sizes: only the last entry may be None (the rest)")
            counts.append(None)
        elif isinstance(size, float):
            if not 0.0 <= size <= 1.0:
                raise ValueError(f"sizes[{k}] as a fraction must lie in [0, 1], got {size}")
            counts.append(int(round(size * n)))
        elif isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0:
            counts.append(int(size))
        else:
            raise ValueError(f"sizes[{k}] must be a count >= 0, a fraction or None, got {size!r}")
    fixed = sum(c for c in counts if c is not None)
    if fixed > n:
        raise ValueError(f"sizes add up to {fixed} samples but labels has only {n}")
    if counts[-1] is None:
        counts[-1] = n - fixed
    try:
        parts = _stratified_splits(y, counts + [n - sum(counts)], seed)[:-1]
    except ValueError as err:  # scikit-learn: a class too small to stratify
        raise ValueError(
            f"labels cannot be split {counts} with every class in proportion ({err}); use "
            f"fewer splits or more samples per class"
        ) from err
    return [torch.as_tensor(part, dtype=torch.long) for part in parts]


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


# The files torchvision writes, per dataset: where they live under ``root`` (the first folder
# that holds any of them is used) and which files make up each split.
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_FILES = {
    "mnist": (("MNIST/raw", "MNIST", "."), _MNIST_FILES),
    "fashion_mnist": (("FashionMNIST/raw", "FashionMNIST", "."), _MNIST_FILES),
    "cifar10": (
        ("cifar-10-batches-py", "."),
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    ),
    "cifar100": (("cifar-100-python", "."), {"train": ("train",), "test": ("test",)}),
}
_CIFAR_META = {"cifar10": ("batches.meta", "label_names"), "cifar100": ("meta", "fine_label_names")}


def _find(folder: Path, filename: str) -> Path | None:
    """``folder/filename``, or its gzipped ``.gz`` version (MNIST's files as downloaded)."""
    for candidate in (folder / filename, folder / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _dataset_folder(name: str, root: Path) -> Path:
    """The first of the dataset's candidate folders under ``root`` that holds any of its files."""
    folders, files = _FILES[name]
    every = [f for split in files.values() for f in split]
    for sub in folders:
        folder = (root / sub).resolve() if sub != "." else root
        if folder.is_dir() and any(_find(folder, f) for f in every):
            return folder
    return root / folders[0]


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format: big-endian header, then uint8 data), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (MNIST's format)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(bytearray(raw), dtype=np.uint8, offset=4 + 4 * ndim)  # writable
    if data.size != math.prod(dims):
        raise ValueError(f"{path} is truncated: header says {dims}, holds {data.size} bytes")
    return data.reshape(dims)


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}


def _read_split(name: str, folder: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, H, W)`` or ``(N, C, H, W)`` uint8 and labels ``(N,)`` of one split."""
    if name in ("mnist", "fashion_mnist"):
        images, labels = _read_idx(paths[0]), _read_idx(paths[1])
    else:
        batches = [_read_pickle(p) for p in paths]
        key = "labels" if name == "cifar10" else "fine_labels"
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b[key]) for b in batches])
    if len(images) != len(labels):
        raise ValueError(
            f"{name} files in {folder} disagree: {len(images)} images, {len(labels)} labels"
        )
    return images, labels


def _class_names(name: str, folder: Path) -> list[str]:
    num_classes = DATASETS[name][1]
    if name in _CIFAR_META:
        filename, key = _CIFAR_META[name]
        meta = _find(folder, filename)
        if meta is not None:
            return list(_read_pickle(meta)[key])
        return [str(i) for i in range(num_classes)]
    try:
        import torchvision

        return list(getattr(torchvision.datasets, DATASETS[name][0]).classes)
    except (ImportError, AttributeError):
        return [str(i) for i in range(num_classes)]


def _normalised(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() == 3:  # (N, H, W) grey
        x = x.unsqueeze(1)
    x = x.float() / 255.0
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    return x.contiguous()


def _missing_files_message(name: str, root: Path, folder: Path, missing: dict) -> str:
    _, files = _FILES[name]
    expected = "; ".join(f"{split}: {', '.join(names)}" for split, names in files.items())
    if folder.is_dir():
        found = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file())) or "no file"
    else:
        found = "no such folder"
    gz = " (each may also be gzipped, .gz)" if name in ("mnist", "fashion_mnist") else ""
    return (
        f"dataset {name!r}: files missing in {folder}: {', '.join(missing)}.\n"
        f"Expected{gz}: {expected}.\n"
        f"Found there: {found}.\n" + _missing_message(name, root)
    )


def load_dataset(
    name: str = "digits",
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    val_size: int = 5000,
    limit: int | None = None,
) -> DatasetSplits:
    """Load a dataset by name into :class:`DatasetSplits`.

    ``digits`` is embedded. ``mnist``, ``fashion_mnist``, ``cifar10`` and ``cifar100`` are read
    from torchvision's files under ``root`` (default :func:`default_root`): ``MNIST/raw/`` (or
    ``MNIST/``, or ``root`` itself) with ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (plain
    or ``.gz``); ``FashionMNIST/raw/`` likewise; ``cifar-10-batches-py/`` with
    ``data_batch_1..5``, ``test_batch`` (and ``batches.meta`` for the class names);
    ``cifar-100-python/`` with ``train``, ``test`` (and ``meta``). Pixels are normalised per
    channel; ``val_size`` images of the official training set are held out (seeded) for
    validation and the official test set is the test split. ``limit`` keeps only the first
    ``limit`` training images (after the validation hold-out), for quick runs.

    A folder with the test files only loads the test split, with empty train and validation
    splits and a warning (enough to evaluate a trained model); one with the training files
    only gets an empty test split, with a warning.

    Raises ``FileNotFoundError`` naming the files expected, the files found and the command
    to run, when no split's files are all there and ``download`` is off or impossible.
    """
    name = name.lower().replace("-", "_")
    if name == "digits":
        splits = load_digits(seed=seed)
    elif name in DATASETS:
        root = Path(root) if root is not None else default_root()
        _, num_classes, shape, mean, std = DATASETS[name]
        if download:
            _fetch(name, root)
        folder = _dataset_folder(name, root)
        paths, missing = {}, {}
        for split, filenames in _FILES[name][1].items():
            found = {f: _find(folder, f) for f in filenames}
            lacking = [f for f, path in found.items() if path is None]
            if lacking:
                missing[split] = lacking
            else:
                paths[split] = list(found.values())
        if not paths:
            lacking = [f for names in missing.values() for f in names]
            raise FileNotFoundError(_missing_files_message(name, root, folder, lacking))
        if missing:
            absent = ", ".join(f for names in missing.values() for f in names)
            warnings.warn(
                f"{name}: loading only the {' and '.join(paths)} split from {folder}; "
                f"missing: {absent} (the other splits are empty)",
                stacklevel=2,
            )
        loaded = {}
        for split in ("train", "test"):
            if split in paths:
                images, labels = _read_split(name, folder, paths[split])
                loaded[split] = (
                    _normalised(images, mean, std),
                    torch.as_tensor(labels, dtype=torch.long),
                )
            else:
                loaded[split] = (torch.empty(0, *shape), torch.empty(0, dtype=torch.long))
        x, y = loaded["train"]
        x_test, y_test = loaded["test"]
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = perm[:val_size], perm[val_size:]
        splits = DatasetSplits(
            name=name,
            train=Split(x[train_idx], y[train_idx]),
            val=Split(x[val_idx], y[val_idx]),
            test=Split(x_test, y_test),
            num_classes=num_classes,
            class_names=_class_names(name, folder),
            input_shape=shape,
            extra={"folder": str(folder), "missing": missing},
        )
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from digits, {', '.join(DATASETS)}")
    if limit is not None:
        splits = replace(splits, train=splits.train.subset(torch.arange(limit)))
    return splits


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - anything numpy cannot read
        raise ValueError(f"{name} must be a numpy array or a tensor, got {type(value)}") from err
    if array.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object (ragged or mixed?)")
    if array.dtype.kind in "US":  # strings: class names, for y
        return array
    if not array.flags.writeable:  # a read-only buffer (np.frombuffer, a memory map): copy it
        array = array.copy()
    return torch.as_tensor(array)


def from_arrays(
    x,
    y,
    val: float | int = 0.2,
    test: float | int = 0.2,
    seed: int = 0,
    normalize: bool = True,
    class_names: Sequence[str] | None = None,
    name: str = "arrays",
) -> DatasetSplits:
    """Your own data as :class:`DatasetSplits`, the object :func:`load_dataset` returns.

    Args:
        x: inputs, a numpy array or a tensor: images ``(N, H, W)`` (grey, made
            ``(N, 1, H, W)``) or ``(N, C, H, W)``, or feature vectors ``(N, F)``. Integer
            pixels (``uint8``) are scaled to [0, 1] first; every value must be finite.
        y: ``(N,)`` class labels: integers ``0 .. C-1`` (any integer dtype), or strings, which
            become classes in sorted order (their names are the class names).
        val, test: the validation and test splits, fractions of ``N`` (floats) or counts
            (ints); the training split takes the rest. Stratified and fixed by ``seed``
            (:func:`stratified_split`); ``0`` gives an empty split.
        normalize: standardise with the training split's mean and standard deviation, per
            channel for images and per feature for vectors; the statistics are in
            ``extra["mean"]`` and ``extra["std"]`` (apply them to new inputs the same way).
        class_names: one name per class (default: the string labels, or ``"0" .. "C-1"``).
        name: the dataset's name in ``repr`` and reports.

    Returns:
        ``DatasetSplits`` with ``train``, ``val``, ``test`` (float32 inputs, int64 labels),
        ``num_classes``, ``class_names``, ``input_shape`` and ``in_channels`` (for images).

    Raises:
        ValueError: naming the argument: ``x`` of another rank, empty, non-numeric or not
            finite; ``y`` not one label per sample, bool, floating or negative; ``class_names``
            of the wrong length; ``val``/``test`` out of range or leaving no training sample;
            a class with too few samples to split in proportion.
    """
    x_t = _as_tensor(x, "x")
    if isinstance(x_t, np.ndarray):
        raise ValueError(f"x must be numeric, got strings of dtype {x_t.dtype}")
    if x_t.dim() not in (2, 3, 4):
        raise ValueError(
            f"x must be images (N, H, W) or (N, C, H, W), or vectors (N, F), got shape "
            f"{tuple(x_t.shape)}"
        )
    if len(x_t) == 0 or x_t[0].numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x_t.shape)})")
    if x_t.dim() == 4 and x_t.shape[-1] in (1, 3) and x_t.shape[1] not in (1, 3):
        raise ValueError(
            f"x has shape {tuple(x_t.shape)}, which looks channels-last (N, H, W, C); pass "
            f"(N, C, H, W), e.g. x.transpose(0, 3, 1, 2) for a numpy array"
        )
    if x_t.dtype == torch.bool or x_t.is_complex():
        raise ValueError(f"x must hold real numbers, got dtype {x_t.dtype}")
    if x_t.dtype == torch.uint8:
        x_t = x_t.float() / 255.0
    x_t = x_t.float()
    if not bool(torch.isfinite(x_t).all()):
        raise ValueError(f"x contains {int((~torch.isfinite(x_t)).sum())} NaN or inf values")
    if x_t.dim() == 3:
        x_t = x_t.unsqueeze(1)

    y_t = _as_tensor(y, "y")
    if isinstance(y_t, np.ndarray):  # string labels: classes in sorted order
        if y_t.ndim != 1:
            raise ValueError(f"y must have shape (N,), got {y_t.shape}")
        names, codes = np.unique(y_t, return_inverse=True)
        y_t = torch.as_tensor(codes, dtype=torch.long)
        class_names = list(class_names) if class_names is not None else [str(n) for n in names]
    else:
        if y_t.dim() != 1:
            raise ValueError(
                f"y must have shape (N,), one label per sample, got {tuple(y_t.shape)}"
            )
        if y_t.dtype == torch.bool or y_t.is_floating_point() or y_t.is_complex():
            raise ValueError(
                f"y must be integer class labels (or strings), got dtype {y_t.dtype}; convert "
                f"with y.astype(int) / y.long() if the values are class numbers"
            )
        y_t = y_t.long()
    if len(y_t) != len(x_t):
        raise ValueError(f"x has {len(x_t)} samples but y has {len(y_t)}")
    if int(y_t.min()) < 0:
        raise ValueError(f"y must be class indices >= 0, got min {int(y_t.min())}")
    num_classes = int(y_t.max()) + 1
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) < num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but y has labels up to {num_classes - 1}"
            )
        num_classes = len(class_names)
    else:
        class_names = [str(c) for c in range(num_classes)]

    n = len(y_t)
    counts = {}
    for label, size in (("val", val), ("test", test)):
        if isinstance(size, bool) or not isinstance(size, (int, float, np.integer)):
            raise ValueError(f"{label} must be a fraction (float) or a count (int), got {size!r}")
        if isinstance(size, float):
            if not 0.0 <= size < 1.0:
                raise ValueError(f"{label} as a fraction must lie in [0, 1), got {size}")
            size = int(round(size * n))
        if size < 0:
            raise ValueError(f"{label} must be >= 0, got {size}")
        counts[label] = int(size)
    if counts["val"] + counts["test"] >= n:
        raise ValueError(
            f"val ({counts['val']}) and test ({counts['test']}) leave no training sample of {n}"
        )
    val_idx, test_idx, train_idx = stratified_split(
        y_t, [counts["val"], counts["test"], None], seed
    )

    extra = {}
    if normalize:
        dims = [0, 2, 3] if x_t.dim() == 4 else [0]
        train_x = x_t[train_idx]
        mean = train_x.mean(dim=dims, keepdim=True)
        std = train_x.std(dim=dims, keepdim=True) if len(train_x) > 1 else torch.ones_like(mean)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant input stays 0
        x_t = (x_t - mean) / std
        extra = {"mean": mean.squeeze(0), "std": std.squeeze(0)}
    x_t = x_t.contiguous()
    return DatasetSplits(
        name=name,
        train=Split(x_t[train_idx], y_t[train_idx]),
        val=Split(x_t[val_idx], y_t[val_idx]),
        test=Split(x_t[test_idx], y_t[test_idx]),
        num_classes=num_classes,
        class_names=class_names,
        input_shape=tuple(x_t.shape[1:]),
        extra=extra,
    )


def download(name: str, root: str | Path | None = None) -> Path:
    """Download a torchvision dataset into ``root`` (default ``data/``); returns the folder."""
    name = name.lower().replace("-", "_")
    if name not in DATASETS:
        raise ValueError(f"nothing to download for {name!r}; choose from {', '.join(DATASETS)}")
    root = Path(root) if root is not None else default_root()
    _fetch(name, root)
    return root


def _fetch(name: str, root: Path) -> None:
    """torchvision's download of both splits into ``root`` (skipped for files already there)."""
    for train in (True, False):
        _torchvision_split(name, root, train=train, download=True)


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


def few_labels(
    split: Split, n_labelled: int | None = None, seed: int = 0, *, per_class: int | None = None
) -> Split:
    """The few-labels transfer set: keep a few labels, hide the rest.

    Either ``n_labelled`` labels in all (default 100), stratified: each class keeps labels in
    proportion to its share of ``split`` (100 of the digits give 10, 11, 10, ..., 9); or, with
    ``per_class=k``, exactly ``k`` labels of every class present in ``split``, as the few-shot
    settings of the papers use (``per_class=10`` on 10 classes: 100 labels). The labelled
    samples are drawn with ``seed``.

    Returns a split with the same images; the labels of the others are replaced by
    ``IGNORE_INDEX`` (-1). A distiller learns from the teacher on every image and from the
    labels on the labelled ones; :func:`labelled` extracts the labelled part for the baseline
    trained on labels alone.

    Raises:
        ValueError: both ``n_labelled`` and ``per_class`` given, ``n_labelled`` outside
            ``[1, N]``, or ``per_class`` < 1 or more than the smallest class has (named).
    """
    y = split.y.cpu().numpy()
    if per_class is not None:
        if n_labelled is not None:
            raise ValueError("give either n_labelled or per_class, not both")
        if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)):
            raise ValueError(f"per_class must be an int, got {per_class!r}")
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        rng = np.random.default_rng(seed)
        keep = []
        for c in np.unique(y[y != IGNORE_INDEX]):
            members = np.flatnonzero(y == c)
            if len(members) < per_class:
                raise ValueError(
                    f"per_class={per_class} but class {int(c)} has only {len(members)} samples"
                )
            keep.append(rng.choice(members, size=per_class, replace=False))
        keep = np.sort(np.concatenate(keep))
    else:
        n_labelled = 100 if n_labelled is None else n_labelled
        if not 0 < n_labelled <= len(split):
            raise ValueError(f"n_labelled must be in [1, {len(split)}], got {n_labelled}")
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


def omit_classes(split: Split, classes: int | Sequence[int]) -> Split:
    """The split without any sample of ``classes`` (Hinton's omitted-digit transfer set).

    ``classes``: one class index or a sequence of them, each an int that has samples in
    ``split`` (a class with none, a string or a float is refused by name: it would silently
    omit nothing).
    """
    if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        classes = [classes]
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray):
        raise ValueError(f"classes must be an int or a sequence of ints, got {classes!r}")
    present = sorted(int(c) for c in torch.unique(split.y[split.y != IGNORE_INDEX]).tolist())
    keep = torch.ones_like(split.y, dtype=torch.bool)
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise ValueError(f"classes must hold int class indices, got {c!r} ({type(c).__name__})")
        if int(c) not in present:
            raise ValueError(
                f"classes: class {int(c)} has no sample in the split (its classes are "
                f"{present[0]}..{present[-1]})"
                if present
                else f"classes: class {int(c)} has no sample in the split (it has no label)"
            )
        keep &= split.y != int(c)
    return split.subset(torch.nonzero(keep).flatten())
