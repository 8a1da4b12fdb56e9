"""Populations: S copies of one network, one per seed, trained as a single vectorised model.

An experiment that compares two methods needs several seeds of each, and training them one
after the other costs S times one run. A population stacks the S members' parameters into
tensors with a leading seed dimension (``torch.func.stack_module_state``) and runs the S
forward passes as one (``torch.func.vmap`` over ``torch.func.functional_call``)::

    params[name]  (S, *shape)        one slice per seed
    logits = vmap(model)(params, x)  (S, B, C): every member sees the same batch x (B, ...)

Member ``s`` is initialised exactly as ``seed_everything(seeds[s]); model_fn()`` would be and,
by default, sees the same batches as every other member: a *paired* design, in which only the
initialisation differs between seeds (``shuffle="per-seed"`` gives each member the loader's
shuffle with its own seed instead). Its update is the one it would get trained alone: the
population's loss is the sum of the members' losses, so member ``s``'s gradient is the
gradient of its own loss, and Adam is element-wise, so one optimiser over the stacked tensors
makes the S updates of S optimisers. ``tests/test_population.py`` checks that every member
equals the same seed trained alone with ``train_supervised`` or ``Distiller``.

The loss of a batch is computed once for all members when that is exact: :func:`kd_loss`,
:func:`dkd_loss` and attention transfer average over the batch, and with every member seeing
the same labels the mean over the ``S * B`` stacked samples is the mean of the members' losses
(so the population minimises ``S`` times it). Otherwise (per-seed shuffles over partly
unlabelled data, a custom loss, or a term that relates the samples of a batch: RKD, SP) the
loss runs member by member on the vectorised forward pass's outputs. Feature terms read the
features the course's models hand out (``model(x, return_features=True)``), for every member
at once.

BatchNorm keeps running statistics per member (the buffers are stacked too). Dropout draws
different masks per member (``randomness="different"``), so a model with dropout trains
correctly but does not repeat the masks of a run alone. Terms that own parameters (FitNets
adapters) are not vectorised: the seeds then train one after the other, each as a population
of one with its own adapter, and a warning says so once; the result has the same shape. A
term that taps a module other than the model's named features is refused here
(``kdlib.distill.Distiller(..., seeds=...)`` trains it seed by seed with hooks).

A population of the course's ``SmallCNN`` or ``MLP`` runs *folded* (:func:`fold`): the
members side by side in the channel dimension, ``(B, S * C, H, W)`` or ``(B, S * C)``, a
SmallCNN's convolutions grouped per member, rather than through ``vmap``, whose layout changes
between layers (a SmallCNN) and per-step machinery (an MLP) cost more than the layers on a CPU
(``benchmarks/README.md``). A folded MLP computes what ``vmap`` computes, to the last bit.

Models: ``MLP`` and ``SmallCNN`` with every loss here; ``TinyGPT`` (logits ``(B, T, V)``) on
the text alone (:func:`train_population`: the next-token cross-entropy over the labelled
tokens); its token-level distillation stays with ``kdlib.lm.SequenceDistiller``. PyTorch has
no ``vmap`` rule for the CPU's fused attention kernel, so on the CPU a TinyGPT population runs
its attention member by member (PyTorch warns once): correct, without the speed-up.

Entry points: :func:`train_population` (labels only, as ``train_supervised``) and
:func:`distill_population` (a frozen teacher, as ``Distiller``); both return a
:class:`Population`, whose :meth:`Population.evaluate` gives one row per seed.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdlib.data import TensorLoader
from kdlib.features import AttentionTerm
from kdlib.losses import IGNORE_INDEX, DKDTerm, hard_loss, kd_loss
from kdlib.models import MLP, SmallCNN
from kdlib.runtime import pick_device, seed_everything
from kdlib.training import Batch, FirstBatchCheck, freeze

__all__ = [
    "Population",
    "SeedTable",
    "fold",
    "check_seeds",
    "estimate_bytes",
    "train_population",
    "distill_population",
    "train_seed_by_seed",
    "terms_tapping_unnamed_features",
]

_warned: set[str] = set()


def _say_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def check_seeds(seeds) -> list[int]:
    """``seeds`` as a list of distinct non-negative ints; ``ValueError`` naming ``seeds`` else."""
    if isinstance(seeds, (int, bool)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a list of ints, e.g. range(8), got {seeds!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: a population needs at least one seed")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ValueError(f"seeds must be ints, got {s!r} ({type(s).__name__})")
        if s < 0:
            raise ValueError(f"seeds must be >= 0 (torch.manual_seed needs one), got {s}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(
            f"seeds must be distinct (a repeated seed trains the same member twice), got {seeds}"
        )
    return seeds


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_bytes(model: nn.Module, n_members: int) -> int:
    """Bytes a population of ``n_members`` copies of ``model`` holds while training with Adam:
    per member its parameters four times (weights, gradients, two moment estimates) and its
    buffers once. Activations come on top (they grow with the batch, not with the seeds' state).
    """
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return n_members * (4 * params + buffers)


class Population:
    """S members of one architecture, their parameters and buffers stacked along dimension 0.

    Args:
        model_fn: ``() -> nn.Module``, called once per seed right after
            ``seed_everything(seed)``, so member ``s`` starts as that seed's model alone would.
        seeds: distinct ints >= 0.
        device: where the stacked tensors live (default :func:`kdlib.distill.pick_device`).
        max_bytes: refuse (``MemoryError``, before building the other members) a population
            whose :func:`estimate_bytes` exceeds this; default: the memory free on the device.

    Attributes:
        seeds: the seeds, in member order.
        params, buffers: ``{name: (S, *shape) tensor}``.
        history: one dict per epoch after training (``epoch``, ``train_loss``: the mean over
            the members; ``val_accuracy``: a list, one per member, with a ``val_loader``).
    """

    def __init__(
        self,
        model_fn: Callable[[], nn.Module],
        seeds: Sequence[int],
        device: str | torch.device | None = None,
        max_bytes: int | None = None,
    ):
        if not callable(model_fn):
            raise ValueError(f"model_fn must be a function () -> nn.Module, got {model_fn!r}")
        self.seeds = check_seeds(seeds)
        self.device = pick_device(device if device is not None else "auto")
        self.model_fn = model_fn
        seed_everything(self.seeds[0])
        first = model_fn()
        if not isinstance(first, nn.Module):
            raise ValueError(f"model_fn must return an nn.Module, got {type(first).__name__}")
        need = estimate_bytes(first, len(self.seeds))
        limit = max_bytes if max_bytes is not None else _available_bytes(self.device)
        if limit is not None and need > limit:
            raise MemoryError(
                f"a population of {len(self.seeds)} seeds of this model needs about "
                f"{need:,} bytes (parameters, gradients and Adam's two moments, per seed) but "
                f"only {limit:,} are available on {self.device}: use fewer seeds, or train "
                f"them in groups"
            )
        members = [first]
        for s in self.seeds[1:]:
            seed_everything(s)
            members.append(model_fn())
        members = [m.to(self.device) for m in members]
        params, buffers = stack_module_state(members)
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = buffers
        self.skeleton = copy.deepcopy(members[0])  # the structure (tied weights stay tied)
        self.folded = fold(self.skeleton, len(self.seeds))
        self._slots = _tensor_slots(self.folded)
        self.history: list[dict] = []

    @classmethod
    def from_members(cls, members: Sequence[nn.Module], seeds: Sequence[int]) -> Population:
        """A population made of already trained models (one per seed, same architecture)."""
        pop = cls.__new__(cls)
        pop.seeds = check_seeds(seeds)
        if len(members) != len(pop.seeds):
            raise ValueError(f"{len(members)} members for {len(pop.seeds)} seeds")
        pop.device = next(iter(members[0].parameters())).device
        pop.model_fn = None
        params, buffers = stack_module_state(list(members))
        pop.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        pop.buffers = buffers
        pop.skeleton = copy.deepcopy(members[0])
        pop.folded = fold(pop.skeleton, len(pop.seeds))
        pop._slots = _tensor_slots(pop.folded)
        pop.history = []
        return pop

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        n = sum(v[0].numel() for v in self.params.values())
        return (
            f"Population({type(self.skeleton).__name__}, {len(self)} seeds {self.seeds}, "
            f"{n:,} parameters each, on {self.device})"
        )

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def forward(
        self, x: torch.Tensor, train: bool, per_member: bool = False, features: bool = False
    ):
        """Logits ``(S, B, C)`` of every member on ``x``: ``(B, ...)`` shared by the members,
        or ``(S, B, ...)`` with ``per_member``. ``train`` sets the members' mode (BatchNorm
        batch statistics and running-statistic updates, dropout). With ``features``, also the
        members' named features ``{name: (S, B, ...)}`` (``model(x, return_features=True)``
        of the course's models)."""
        kwargs = {"return_features": True} if features else {}
        if self.folded is not None:
            return self._forward_folded(x, train, per_member, kwargs)
        if self.skeleton.training != train:
            self.skeleton.train(train)

        def one(params, buffers, inputs):
            return functional_call(self.skeleton, (params, buffers), (inputs,), kwargs)

        dims = (0, 0, 0 if per_member else None)
        return vmap(one, in_dims=dims, randomness="different")(self.params, self.buffers, x)

    def _forward_folded(self, x, train, per_member, kwargs):
        """The members side by side in the channel dimension (see :func:`fold`): one model
        with S times the channels, its convolutions grouped per member."""
        S = len(self)
        if per_member:  # (S, B, C, ...) -> (B, S * C, ...)
            x = x.transpose(0, 1).flatten(1, 2)
        if self.folded.training != train:
            self.folded.train(train)
        for module, attr, name in self._slots:  # the stacked tensors, as they are now
            module.__dict__[attr] = self.params[name] if name in self.params else self.buffers[name]
        out = self.folded(x, **kwargs)
        logits, feats = out if kwargs else (out, None)
        logits = _unfold(logits, S)
        if feats is None:
            return logits
        return logits, {k: _unfold(v, S) for k, v in feats.items()}

    @torch.no_grad()
    def logits(self, data, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode logits ``(S, N, C)`` of every member on ``data`` (a ``Split``, an
        ``(x, y)`` pair or a loader) and its labels ``(N,)``."""
        outs, labels = [], []
        for x, y in _pairs(data, batch_size):
            outs.append(self.forward(x.to(self.device), train=False).float())
            labels.append(y.to(self.device))
        return torch.cat(outs, dim=1), torch.cat(labels)

    def evaluate(self, data) -> list[dict]:
        """One row per member: ``{"seed", "accuracy", "loss"}`` on ``data`` (unlabelled samples
        skipped)."""
        logits, y = self.logits(data)
        keep = y != IGNORE_INDEX
        logits, y = logits[:, keep], y[keep]
        correct = (logits.argmax(-1) == y).double().mean(-1).tolist()
        losses = [torch.nn.functional.cross_entropy(z, y).item() for z in logits]
        return [
            {"seed": s, "accuracy": a, "loss": v} for s, a, v in zip(self.seeds, correct, losses)
        ]

    def table(self, **splits) -> list[dict]:
        """One row per seed, ``{"seed", "<name>_accuracy", "<name>_loss"}`` for each split
        given by name, e.g. ``pop.table(val=digits.val, test=digits.test)``; the last epoch's
        training loss of the population is in :attr:`history`."""
        if not splits:
            raise ValueError("table needs at least one split by name, e.g. table(test=data.test)")
        rows = [{"seed": s} for s in self.seeds]
        for name, data in splits.items():
            for row, result in zip(rows, self.evaluate(data)):
                row[f"{name}_accuracy"] = result["accuracy"]
                row[f"{name}_loss"] = result["loss"]
        return rows

    def accuracy(self, data) -> list[float]:
        """Accuracy of each member on ``data``, in seed order."""
        return [row["accuracy"] for row in self.evaluate(data)]

    def member(self, k: int) -> nn.Module:
        """Member ``k`` as an ordinary ``nn.Module`` (a copy: training it leaves the population
        alone)."""
        if not 0 <= k < len(self):
            raise ValueError(f"member index must be in [0, {len(self)}), got {k}")
        model = copy.deepcopy(self.skeleton)
        state = {n: t[k].detach().clone() for n, t in {**self.params, **self.buffers}.items()}
        # a tied weight (TinyGPT's output layer is its embedding) is stored under one name only
        missing, unexpected = model.load_state_dict(state, strict=False)
        names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
        if unexpected or not set(missing) <= names:
            raise RuntimeError(f"member state does not fit the model: {missing}, {unexpected}")
        model.train(False)
        return model

    def members(self) -> list[nn.Module]:
        return [self.member(k) for k in range(len(self))]


def _unfold(t: torch.Tensor, S: int) -> torch.Tensor:
    """``(B, S * C, ...)`` -> ``(S, B, C, ...)`` (a view)."""
    return t.unflatten(1, (S, -1)).transpose(0, 1)


class _FoldedConv2d(nn.Module):
    """S convolutions as one: weight ``(S, C_out, C_in / g, k, k)`` applied as one convolution
    with ``S * g`` groups to ``(B, S * C_in, H, W)``, or, when every member sees the same input
    ``(B, C_in, H, W)`` (the first layer), as one convolution with ``S * C_out`` filters."""

    def __init__(self, conv: nn.Conv2d, S: int):
        super().__init__()
        self.in_channels, self.groups = conv.in_channels, conv.groups
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = nn.Parameter(torch.empty(S, *conv.weight.shape, device="meta"))
        self.bias = (
            None
            if conv.bias is None
            else nn.Parameter(torch.empty(S, *conv.bias.shape, device="meta"))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.weight.shape[0]
        groups = self.groups * S
        if x.shape[1] == self.in_channels and S > 1:  # shared by the members
            if self.groups == 1:
                groups = 1
            else:
                x = x.repeat(1, S, 1, 1)
        bias = None if self.bias is None else self.bias.flatten()
        return F.conv2d(
            x, self.weight.flatten(0, 1), bias, self.stride, self.padding, self.dilation, groups
        )


class _FoldedBatchNorm2d(nn.Module):
    """S BatchNorms as one over ``(B, S * C, H, W)``: the statistics are per channel, so per
    member and channel, as each member's own BatchNorm; the running statistics are updated in
    place in the stacked buffers ``(S, C)``."""

    def __init__(self, bn: nn.BatchNorm2d, S: int):
        super().__init__()
        self.eps, self.momentum = bn.eps, bn.momentum
        for name, t in list(bn.named_parameters(recurse=False)):
            setattr(self, name, nn.Parameter(torch.empty(S, *t.shape, device="meta")))
        for name, t in list(bn.named_buffers(recurse=False)):
            self.register_buffer(name, torch.empty(S, *t.shape, dtype=t.dtype, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.flatten(),
            self.bias.flatten(),
            self.training,
            self.momentum,
            self.eps,
        )


class _FoldedLinear(nn.Module):
    """S linear layers as one: ``(B, S * C_in)`` (or ``(B, C_in)`` shared) to
    ``(B, S * C_out)``, weight ``(S, C_out, C_in)``."""

    def __init__(self, linear: nn.Linear, S: int):
        super().__init__()
        self.in_features = linear.in_features
        self.weight = nn.Parameter(torch.empty(S, *linear.weight.shape, device="meta"))
        self.bias = nn.Parameter(torch.empty(S, *linear.bias.shape, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.weight.shape[0]
        if x.shape[-1] == self.in_features and S > 1:  # shared by the members
            out = torch.einsum("bc,skc->bsk", x, self.weight)
        else:
            out = torch.einsum("bsc,skc->bsk", x.unflatten(-1, (S, -1)), self.weight)
        return _AddBias.apply(out, self.bias).flatten(1)


class _AddBias(torch.autograd.Function):
    """``out + bias`` for ``out (B, S, K)`` and ``bias (S, K)``, whose backward sums each
    member's bias gradient over its own contiguous ``(B, K)`` block, in the order
    ``F.linear`` sums it for one model (and ``vmap`` for each member): summed across the
    folded ``(B, S, K)`` layout, the float rounding differs in the last bit."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return out + bias

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad.transpose(0, 1).contiguous().sum(1)


_FOLD = {nn.Conv2d: _FoldedConv2d, nn.BatchNorm2d: _FoldedBatchNorm2d, nn.Linear: _FoldedLinear}


_FOLDABLE = (SmallCNN, MLP)


def _channelwise_types() -> set[type]:
    """The layers the course's SmallCNN and MLP are built from other than those of ``_FOLD``
    (ReLU, the 2x2 max-pool, average pooling, flattening, dropout, Sequential): each acts on
    every channel (every feature) alone, so they run unchanged on the folded layout."""
    with torch.random.fork_rng(devices=[]):  # the global random state stays as it was
        references = [SmallCNN(1, 2, width=1, depth=1, dropout=0.5), MLP(4, (2,), 2, dropout=0.5)]
    return {type(m) for r in references for m in r.modules()} - set(_FOLD)


def fold(model: nn.Module, S: int) -> nn.Module | None:
    """``model`` rebuilt to run S members side by side in the channel dimension, or ``None``
    when it cannot be (then the population runs ``vmap``).

    The members' activations ``(S, B, C, H, W)`` are laid out as ``(B, S * C, H, W)`` (an
    MLP's ``(S, B, C)`` as ``(B, S * C)``): a convolution becomes one convolution with ``S``
    times the groups, a BatchNorm one BatchNorm over ``S * C`` channels (its statistics are
    per channel, so per member), a linear layer one batched product over the members, and
    ReLU, max- and average pooling, dropout and flattening run unchanged, each on its own
    channels. Nothing moves between the layouts from layer to layer, which is where ``vmap``
    spends its time on a CPU for a small CNN, and no ``vmap`` or ``functional_call``
    machinery runs, which is most of a small MLP's step. The folded model
    runs the model's own ``forward`` (its code, with these layers swapped in) and takes the
    population's stacked tensors by name. Only the course's :class:`kdlib.models.SmallCNN`
    and :class:`kdlib.models.MLP` are folded: a model with other code between its layers (a
    residual sum over a channel-padded shortcut, an attention) would mix the members.
    """
    if type(model) not in _FOLDABLE:
        return None
    channelwise = _channelwise_types()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and (
            m.momentum is None or not m.track_running_stats or not m.affine
        ):
            return None
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return None
        if isinstance(m, nn.Linear) and m.bias is None:
            return None
        if type(m) not in _FOLD and type(m) not in channelwise:
            return None
    folded = copy.deepcopy(model).to("meta")

    def swap(parent: nn.Module):
        for name, child in parent.named_children():
            if type(child) in _FOLD:
                setattr(parent, name, _FOLD[type(child)](child, S))
            else:
                swap(child)

    swap(folded)
    return folded


def _tensor_slots(folded: nn.Module | None) -> list[tuple[nn.Module, str, str]]:
    """``(layer, attribute, name)`` of every parameter and buffer of a folded model, which are
    then removed from it: a population sets each attribute to its stacked tensor of that name
    before a forward pass (what ``functional_call`` does, without its cost per step, a few
    hundred microseconds for a SmallCNN, the time of its smaller layers)."""
    if folded is None:
        return []
    slots = []
    for full, module in folded.named_modules():
        for store in (module._parameters, module._buffers):
            for attr in list(store):
                slots.append((module, attr, f"{full}.{attr}" if full else attr))
                del store[attr]
    return slots


class SeedTable(list):
    """What ``train_supervised(..., seeds=...)`` and ``Distiller(..., seeds=...).fit`` return:
    one row per seed, in seed order, a dict ``{"seed", "val_accuracy", "val_loss"}`` (the
    last two with a ``val_loader``: each member's, after the last epoch).

    Attributes:
        population: the trained :class:`Population` (``member(k)``, ``evaluate``,
            ``table(test=...)`` for more splits, ``accuracy``).
        history: one dict per epoch (``train_loss``: the members' mean; ``val_accuracy``: a
            list, one per seed).
    """

    def __init__(self, population: Population, val_loader=None):
        if val_loader is not None:
            rows = population.table(val=val_loader)
        else:
            rows = [{"seed": s} for s in population.seeds]
        super().__init__(rows)
        self.population = population
        self.history = population.history

    def column(self, name: str) -> list:
        """The values of one column, in seed order, e.g. ``table.column("val_accuracy")``."""
        if not self or name not in self[0]:
            raise ValueError(f"no column {name!r}; the columns are {list(self[0]) if self else []}")
        return [row[name] for row in self]

    def models(self) -> list[nn.Module]:
        """The trained members as ordinary models, in seed order."""
        return self.population.members()


def _pairs(data, batch_size: int):
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        for i in range(0, len(y), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    if hasattr(data, "x") and hasattr(data, "y") and not isinstance(data, TensorLoader):
        data = data.loader(batch_size=batch_size)
    for batch in data:
        yield batch[0], batch[1]


def _member_loaders(loader, seeds: list[int], shuffle: str):
    """``None`` for the paired design, else one copy of ``loader`` per seed, shuffled with it."""
    if shuffle == "paired":
        return None
    if shuffle != "per-seed":
        raise ValueError(f"shuffle must be 'paired' or 'per-seed', got {shuffle!r}")
    if not isinstance(loader, TensorLoader) or not loader.shuffle:
        raise ValueError(
            "shuffle='per-seed' needs a shuffling TensorLoader "
            "(data.train.loader(batch_size, shuffle=True))"
        )
    copies = []
    for s in seeds:
        c = copy.copy(loader)
        c.generator = torch.Generator(device="cpu").manual_seed(s)
        copies.append(c)
    return copies


def _adam_factory(lr: float, weight_decay: float):
    def make(params):
        try:  # the Distiller's default: fused where the device has a kernel
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    return make


def _check_epochs(epochs) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    return epochs


def _train(
    pop: Population,
    train_loader,
    epochs: int,
    val_loader,
    member_loss: Callable,
    stacked_loss: Callable | None,
    teacher_logits: Callable | None,
    optimizer,
    lr_schedule,
    shuffle: str,
    features: tuple = (),
    extra_params: Sequence[torch.Tensor] = (),
) -> Population:
    """The loop shared by both entry points: one step updates every member. ``features``:
    ``(student names, teacher names)`` of the features the loss needs, or empty;
    ``extra_params``: trained with the members (a population of one seed's adapters)."""
    loaders = _member_loaders(train_loader, pop.seeds, shuffle)
    has_unlabelled = isinstance(train_loader, TensorLoader) and bool(
        (train_loader.y == IGNORE_INDEX).any()
    )
    if loaders is not None and has_unlabelled:
        stacked_loss = None  # members' labelled counts differ: the stacked mean is not exact
    opt = optimizer(pop.parameters() + list(extra_params))
    scheduler = lr_schedule(opt) if lr_schedule is not None else None
    S = len(pop)
    first_batch = FirstBatchCheck()  # the losses check the first batch only, as in the Distiller
    first_batch.start(train_loader)
    for epoch in range(1, epochs + 1):
        losses, sizes = [], []
        batches = zip(*loaders) if loaders is not None else ((b,) for b in train_loader)
        for group in batches:
            if loaders is None:
                x, y = group[0][0].to(pop.device), group[0][1].to(pop.device)
                index = group[0][2] if len(group[0]) > 2 else None
                ys = y.expand(S, *y.shape)
            else:
                x = torch.stack([b[0] for b in group]).to(pop.device)
                ys = torch.stack([b[1] for b in group]).to(pop.device)
                index = torch.stack([b[2] for b in group]) if len(group[0]) > 2 else None
                y = None
            per_member = loaders is not None
            sf = tf = {}  # student and teacher features, by name: (S, B, ...)
            if features:
                z, sf = pop.forward(x, train=True, per_member=per_member, features=True)
                sf = {k: v for k, v in sf.items() if k in features[0]}
            else:
                z = pop.forward(x, train=True, per_member=per_member)
            z = z.float()  # (S, B, C)
            t = teacher_logits(x, index, per_member) if teacher_logits else None
            if isinstance(t, tuple):  # (logits, features) of a teacher whose features are tapped
                t, tf = t[0], {k: v for k, v in t[1].items() if k in features[1]}
                if not per_member:
                    tf = {k: v.expand(S, *v.shape) for k, v in tf.items()}
            if t is not None and not per_member and not _per_seed_output(t, S, x.shape[0]):
                t = t.expand(S, *t.shape)  # one teacher output for every member
            if stacked_loss is not None:
                loss = stacked_loss(
                    z.flatten(0, 1),
                    None if t is None else t.flatten(0, 1),
                    ys.flatten(0, 1).long(),
                    {k: v.flatten(0, 1) for k, v in sf.items()},
                    {k: v.flatten(0, 1) for k, v in tf.items()},
                    check=first_batch.pending,
                )
                total = S * loss  # the sum of the members' losses
                mean = loss.detach()
            else:
                parts = [
                    member_loss(
                        z[s],
                        None if t is None else t[s],
                        ys[s].long(),
                        {k: v[s] for k, v in sf.items()},
                        {k: v[s] for k, v in tf.items()},
                        check=first_batch.pending,
                    )
                    for s in range(S)
                ]
                total = torch.stack(parts).sum()
                mean = total.detach() / S
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            first_batch.done()
            losses.append(mean)
            sizes.append(ys.shape[1])
        if scheduler is not None:
            scheduler.step()
        weights = torch.tensor(sizes, dtype=torch.float64)
        record = {
            "epoch": epoch,
            "train_loss": float((torch.stack(losses).double().cpu() @ weights) / max(sum(sizes), 1))
            if losses
            else math.nan,
        }
        if not math.isfinite(record["train_loss"]):
            raise ValueError(
                f"the loss of epoch {epoch} is not finite: a member diverged "
                f"(lower the learning rate) or the inputs contain NaN or inf"
            )
        if val_loader is not None:
            record["val_accuracy"] = pop.accuracy(val_loader)
        pop.history.append(record)
    return pop


def train_population(
    model_fn: Callable[[], nn.Module],
    seeds: Sequence[int],
    train_loader,
    epochs: int = 10,
    val_loader=None,
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: Callable | None = None,
    lr_schedule: Callable | None = None,
    label_smoothing: float = 0.0,
    shuffle: str = "paired",
    device: str | torch.device | None = None,
    max_bytes: int | None = None,
) -> Population:
    """Train one ``model_fn()`` per seed on the labels alone, all at once.

    Member ``s`` equals ``seed_everything(s); m = model_fn(); train_supervised(m, train_loader,
    epochs, lr=lr, ...)`` (float tolerance). The cross-entropy is :func:`kdlib.losses.hard_loss`
    (averaged over the labelled samples, -1 skipped; for a language model such as
    ``TinyGPT``, whose logits are ``(B, T, V)``, over the labelled tokens, as
    ``kdlib.lm.SequenceDistiller`` without a teacher); with ``label_smoothing`` the same
    cross-entropy against smoothed targets, as ``train_supervised(label_smoothing=...)``.

    Args:
        train_loader: a loader yielding ``(x, y[, index])``; with ``shuffle="paired"`` (default)
            every member sees its batches; ``"per-seed"``: member ``s`` sees the loader's
            shuffle drawn with seed ``s`` (a ``TensorLoader`` with ``shuffle=True``).
        optimizer: a factory ``params -> optimizer`` over the stacked tensors; it must be
            element-wise (Adam, SGD, ...) for the members to stay independent. Default: Adam
            with ``lr`` and ``weight_decay`` as in the Distiller.
        lr_schedule: factory ``optimizer -> scheduler``, stepped once per epoch.
        max_bytes: see :class:`Population`.
    """
    epochs = _check_epochs(epochs)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
    pop = Population(model_fn, seeds, device, max_bytes)

    def loss(z, t, y, sf=None, tf=None, check=True):
        if z.dim() > 2:  # a language model's (B, T, V): every labelled token is a sample
            z, y = z.reshape(-1, z.shape[-1]), y.reshape(-1)
        if label_smoothing == 0.0:
            return hard_loss(z, y, check=check)
        # the cross-entropy with smoothed targets, averaged over the labelled samples
        total = F.cross_entropy(
            z, y, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="sum"
        )
        return total / (y != IGNORE_INDEX).sum().clamp_min(1)

    return _train(
        pop,
        train_loader,
        epochs,
        val_loader,
        loss,
        loss,
        None,
        optimizer or _adam_factory(lr, weight_decay),
        lr_schedule,
        shuffle,
    )


def _per_seed_output(t: torch.Tensor, S: int, B: int) -> bool:
    """Whether a teacher's output ``t`` for a batch of ``B`` inputs is one per member,
    ``(S, B, ...)`` (member ``s`` taught by row ``s``, e.g. a population as the teacher), rather
    than one shared output ``(B, ...)`` such as ``(B, C)`` or a language model's ``(B, T, V)``
    (read as per member only in the corner case ``B == S == T``)."""
    return t.dim() >= 3 and t.shape[0] == S and t.shape[1] == B


def _teacher_logits_fn(
    teacher: nn.Module, device, train_loader, cache: bool, features: bool = False, batch_size=512
):
    """``f(x, index, per_member) -> (B, C) or (S, B, C)`` teacher logits: by running the frozen
    teacher, or from a table of every training sample's logits computed once (``cache``).
    With ``features``: ``(logits, {name: features})``, from ``teacher(x, return_features=True)``."""
    if cache and features:
        raise ValueError(
            "cache_teacher=True caches logits only, but the terms tap teacher features: the "
            "teacher must run every step"
        )
    if cache:
        if not isinstance(train_loader, TensorLoader) or not train_loader.return_index:
            raise ValueError(
                "cache_teacher=True needs a TensorLoader with return_index=True "
                "(the cache is keyed by dataset index)"
            )
        if train_loader.transform is not None:
            raise ValueError(
                "cache_teacher=True was refused: the training loader applies a "
                "random transform, so cached teacher logits would not match the "
                "inputs; turn the augmentation or the cache off"
            )
        with torch.no_grad():
            x = train_loader.x
            table = torch.cat(
                [
                    teacher(x[i : i + batch_size].to(device)).float()
                    for i in range(0, len(x), batch_size)
                ]
            )

        def lookup(x, index, per_member):
            return table[index.to(device)]

        return lookup

    def run(x, index, per_member):
        with torch.no_grad():
            inputs = x.flatten(0, 1) if per_member else x
            out = teacher(inputs, return_features=True) if features else teacher(inputs)
            logits, feats = out if features else (out, {})
            logits = logits.float()
            if per_member:
                S, B = x.shape[:2]
                logits = logits.view(S, B, *logits.shape[1:])
                feats = {k: v.view(S, B, *v.shape[1:]) for k, v in feats.items()}
            return (logits, feats) if features else logits

    return run


def distill_population(
    model_fn: Callable[[], nn.Module],
    seeds: Sequence[int],
    teacher: nn.Module,
    train_loader,
    epochs: int = 10,
    val_loader=None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    loss: Callable | None = None,
    terms: Iterable = (),
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: Callable | None = None,
    lr_schedule: Callable | None = None,
    cache_teacher: bool = False,
    shuffle: str = "paired",
    device: str | torch.device | None = None,
    max_bytes: int | None = None,
) -> Population:
    """Distil ``teacher`` into one ``model_fn()`` per seed, all at once.

    Member ``s`` equals ``seed_everything(s); m = model_fn(); Distiller(m, teacher,
    temperature=..., alpha=..., terms=..., lr=...).fit(train_loader, epochs)`` (float
    tolerance). The loss is :func:`kdlib.losses.kd_loss` (``alpha`` weights the hard term)
    plus ``term.weight * term(batch)`` for each term; :class:`kdlib.losses.DKDTerm` is
    vectorised, so ``alpha=1.0, terms=[DKDTerm()]`` is DKD, and so is ``AttentionTerm``; a
    ``RelationTerm`` (RKD, SP), a custom ``loss(z_S, z_T, y)`` or another term runs member by
    member on the vectorised outputs; a term with parameters (``HintTerm``'s adapter) trains
    the seeds one after the other, a population of one each, with a warning. ``terms`` may be
    a factory ``() -> list of terms``, called for each seed right after its model is made (so
    that an adapter starts as it would in that seed's run alone); a plain list is copied for
    each seed.

    The teacher's output for a batch ``(B, ...)`` is shared by every member (``(B, C)``, or a
    language model's ``(B, T, V)``); a teacher that returns ``(S, B, ...)`` teaches member by
    member (row ``s`` teaches member ``s``, e.g. a trained population as the teacher).

    ``cache_teacher``: the teacher's logits of every training sample are computed once, before
    the first step (a ``TensorLoader`` with ``return_index=True`` and no transform). The
    other arguments are those of :func:`train_population`.
    """
    epochs = _check_epochs(epochs)
    make_terms = terms if callable(terms) else None
    if make_terms is not None:  # a factory: one fresh set of terms (adapters) per seed
        terms = make_terms()
    if not isinstance(teacher, nn.Module):
        raise ValueError(
            f"teacher must be one nn.Module (a trained model), got "
            f"{type(teacher).__name__}; several teachers: wrap them as one, "
            f"kdlib.multi_teacher.CombinedTeachers(teachers, teacher_ensemble(temperature))"
        )
    terms = list(terms)
    seed_everything(check_seeds(seeds)[0])
    probe = model_fn()  # which features the model hands out (model(x, return_features=True))
    unknown = terms_tapping_unnamed_features(terms, probe, teacher)
    if unknown:
        raise ValueError(
            f"terms: {', '.join(type(t).__name__ for t in unknown)} taps features the models "
            f"do not hand out (model(x, return_features=True) gives "
            f"{tuple(getattr(probe, 'feature_names', ()))} for the student, "
            f"{tuple(getattr(teacher, 'feature_names', ()))} for the teacher): train with "
            f"kdlib.distill.Distiller(..., seeds=...), which taps any module"
        )
    for t in terms:
        if not hasattr(t, "weight"):
            raise ValueError(f"term {t!r} has no 'weight' attribute")
    looped = [t for t in terms if _trainable(t)]
    recipe = dict(
        temperature=temperature,
        alpha=alpha,
        loss=loss,
        optimizer=optimizer or _adam_factory(lr, weight_decay),
        lr_schedule=lr_schedule,
        cache_teacher=cache_teacher,
    )
    if looped:
        names = ", ".join(type(t).__name__ for t in looped)
        _say_once(
            f"loop:{names}",
            f"distill_population: {names} has parameters (an adapter) and is not "
            f"vectorised: training the seeds one by one (a population of one seed each, with "
            f"its own adapter)",
        )
        return _distill_one_by_one(
            model_fn,
            seeds,
            teacher,
            train_loader,
            epochs,
            val_loader,
            make_terms or (lambda: copy.deepcopy(terms)),
            recipe,
            device,
            shuffle,
        )
    pop = Population(model_fn, seeds, device, max_bytes)
    return _distill(pop, teacher, terms, train_loader, epochs, val_loader, recipe, shuffle)


def terms_tapping_unnamed_features(terms, student: nn.Module, teacher: nn.Module | None) -> list:
    """The terms that tap a feature the models do not hand out by name (their
    ``feature_names``, from ``model(x, return_features=True)``): a population cannot give
    them their features; :class:`kdlib.distill.Distiller` taps any module."""
    names = (
        set(getattr(student, "feature_names", ())),
        set(getattr(teacher, "feature_names", ())),
    )
    return [
        t
        for t in terms
        if not set(getattr(t, "student_features", ())) <= names[0]
        or not set(getattr(t, "teacher_features", ())) <= names[1]
    ]


def _trainable(term) -> bool:
    """Whether a term has parameters to train (an adapter)."""
    return isinstance(term, nn.Module) and any(p.requires_grad for p in term.parameters())


def _distill(pop, teacher, terms, train_loader, epochs, val_loader, recipe, shuffle):
    """Train ``pop`` from ``teacher`` with ``kd_loss`` (or ``recipe["loss"]``) and ``terms``;
    the parameters of the terms (one seed's adapters) train with it."""
    teacher = freeze(teacher.to(pop.device))
    terms = [t.to(pop.device) if isinstance(t, nn.Module) else t for t in terms]
    loss = recipe["loss"]
    student_names = {n for t in terms for n in getattr(t, "student_features", ())}
    teacher_names = {n for t in terms for n in getattr(t, "teacher_features", ())}

    def base(z, t, y, check):
        if loss is not None:
            out = loss(z, t, y)
            return out.total if hasattr(out, "total") else out
        return kd_loss(
            z, t, y, temperature=recipe["temperature"], alpha=recipe["alpha"], check=check
        )

    def with_terms(z, t, y, sf, tf, check=True):
        total = base(z, t, y, check)
        for term in terms:
            total = total + term.weight * term(Batch(None, y, None, z, t, sf, tf, check))
        return total

    # averages over the samples of a batch: the stacked mean is the mean of the members' losses
    # (a relation term, RKD or SP, relates the samples of a batch: it runs member by member)
    separable = loss is None and all(isinstance(t, (DKDTerm, AttentionTerm)) for t in terms)
    if not separable and len(pop) > 1:
        _say_once(
            "member-loss",
            "distill_population: a custom loss or term runs member by "
            "member (the forward passes stay vectorised)",
        )

    features = (student_names, teacher_names) if student_names or teacher_names else ()
    teacher_fn = _teacher_logits_fn(
        teacher, pop.device, train_loader, recipe["cache_teacher"], bool(teacher_names)
    )
    extra = [p for t in terms if _trainable(t) for p in t.parameters() if p.requires_grad]
    return _train(
        pop,
        train_loader,
        epochs,
        val_loader,
        with_terms,
        with_terms if separable else None,
        teacher_fn,
        recipe["optimizer"],
        recipe["lr_schedule"],
        shuffle,
        features,
        list({id(p): p for p in extra}.values()),
    )


def train_seed_by_seed(
    seeds: Sequence[int],
    train_loader,
    epochs: int,
    val_loader,
    shuffle: str,
    train_one: Callable,
) -> Population:
    """The seeds trained one after the other, then stacked into a population: for what is not
    vectorised (a term with parameters, a term that taps any module).

    ``train_one(seed, loader) -> (model, history)`` trains one seed's model on ``loader``
    (``history``: one dict per epoch with ``train_loss`` and, with a ``val_loader``, a
    ``val_accuracy`` float). Every seed sees the same batches (``shuffle="paired"``: the
    loader's shuffle is restarted from where it stood) or its own shuffle (``"per-seed"``).
    The population's history has the mean training loss and one validation accuracy per seed.
    """
    seeds = check_seeds(seeds)
    loaders = _member_loaders(train_loader, seeds, shuffle) or [train_loader] * len(seeds)
    generator = getattr(train_loader, "generator", None)
    start = generator.get_state() if generator is not None and shuffle == "paired" else None
    members, histories = [], []
    for s, loader in zip(seeds, loaders):
        if start is not None:  # the paired design: every seed sees the same batches
            generator.set_state(start)
        model, history = train_one(s, loader)
        members.append(model)
        histories.append(history)
    pop = Population.from_members(members, seeds)
    for e in range(epochs):
        record = {
            "epoch": e + 1,
            "train_loss": sum(h[e]["train_loss"] for h in histories) / len(seeds),
        }
        if val_loader is not None:
            record["val_accuracy"] = [h[e]["val_accuracy"] for h in histories]
        pop.history.append(record)
    return pop


def _distill_one_by_one(
    model_fn, seeds, teacher, train_loader, epochs, val_loader, make_terms, recipe, device, shuffle
) -> Population:
    """The fallback for terms with parameters: a population of one seed after the other, each
    with a fresh set of terms (``make_terms()``, made right after the seed's model, as in that
    seed's run alone)."""

    def train_one(seed, loader):
        one = Population(model_fn, [seed], device)
        one = _distill(
            one, teacher, list(make_terms()), loader, epochs, val_loader, recipe, "paired"
        )
        history = [
            {**h, "val_accuracy": h["val_accuracy"][0]} if "val_accuracy" in h else h
            for h in one.history
        ]
        return one.member(0), history

    pop = train_seed_by_seed(seeds, train_loader, epochs, val_loader, shuffle, train_one)
    pop.model_fn = model_fn
    return pop
