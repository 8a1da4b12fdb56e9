"""Feature taps: named intermediate activations of any ``nn.Module``, through forward hooks.

    with FeatureTaps(model, ["layer2", "layer3"]) as taps:
        logits = model(x)
        f2, f3 = taps["layer2"], taps["layer3"]      # (N, C, H, W) tensors
    # the hooks are removed here

Names are the module names of ``model.named_modules()`` (``"layer2.0.conv1"``); a model wrapped
by ``DataParallel``/``DistributedDataParallel`` is resolved through ``.module``, so the names
are the same with or without the wrapper. A name that does not exist raises ``ValueError``
listing the names that do. A tapped module that runs twice in one forward pass (a ReLU shared
between blocks, say) raises, because "its output" would be ambiguous. ``clear()`` forgets the
captured tensors; ``remove()`` (or leaving the ``with`` block) removes the hooks.

Feature-based distillation losses built on the taps (the student matches the teacher's
intermediate representations, not only its outputs):

- :func:`hint_loss` / :class:`HintTerm`: FitNets (Romero et al., ICLR 2015), an MSE between a
  student feature and a teacher feature, through a learned adapter when the widths differ;
- :func:`attention_map`, :func:`attention_transfer_loss` / :class:`AttentionTerm`: attention
  transfer (Zagoruyko & Komodakis, ICLR 2017), matching where in the image the networks are
  active rather than the features themselves;
- :func:`feature_shapes`: the shapes of a model's named features, from one dummy forward pass,
  to size an adapter.

The ``*Term`` classes plug into ``kdlib.distill.Distiller(terms=[...])``: they name the layers
to tap (``student_features`` / ``teacher_features``) and carry a ``weight``.

The loss functions raise ``ValueError`` naming the argument for an empty batch or features that
contain NaN or inf. The finiteness check reads a value back from the device (a host-device
synchronisation); ``check=False`` skips it, and the ``*Term`` classes run it on the first batch
they see only, so that a training step stays free of synchronisations (the Distiller reports a
non-finite epoch loss anyway).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureTaps",
    "unwrap",
    "module_names",
    "feature_shapes",
    "make_adapter",
    "resize_to",
    "hint_loss",
    "HintTerm",
    "attention_map",
    "attention_transfer_loss",
    "AttentionTerm",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DataParallel`` / ``DistributedDataParallel`` wrapper, if any."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def module_names(model: nn.Module) -> list[str]:
    """Every tappable module name of ``model`` (the wrapper's ``module.`` prefix removed)."""
    return [name for name, _ in unwrap(model).named_modules() if name]


class FeatureTaps:
    """Capture the outputs of the named submodules of ``model`` on each forward pass.

    Args:
        model: any ``nn.Module`` (wrapped or not).
        names: module names to tap, e.g. ``["layer1", "layer3.4.bn2"]``.
        detach: store ``output.detach()`` (use for a teacher, whose features must not carry a
            gradient); the student's taps keep the graph so a feature loss can train it.

    The captured tensors are available as ``taps[name]`` / ``taps.features`` (an ordered dict
    in the order of ``names``) after a forward pass, and are replaced by the next forward pass
    after ``clear()``.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], detach: bool = False):
        self.model = unwrap(model)
        self.names = list(dict.fromkeys(names))
        self.detach = detach
        self.features: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._handles = []
        self._paused = False
        modules = dict(self.model.named_modules())
        missing = [n for n in self.names if n not in modules or not n]
        if missing:
            available = ", ".join(module_names(self.model))
            raise ValueError(
                f"no module named {', '.join(map(repr, missing))} in "
                f"{type(self.model).__name__}; available names: {available}"
            )
        for name in self.names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self._paused:
                return
            if name in self.features:
                raise RuntimeError(
                    f"module {name!r} ran twice in one forward pass (is it shared?); call "
                    f"clear() between passes, or tap a module that runs once"
                )
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[name] = output.detach() if self.detach else output

        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.features[name]
        except KeyError:
            raise KeyError(
                f"no feature {name!r} captured yet (tapped: {', '.join(self.names)}); "
                f"run a forward pass first"
            ) from None

    def clear(self) -> None:
        self.features = OrderedDict()

    @contextmanager
    def paused(self):
        """Capture nothing inside the ``with`` block (forward passes that are not training
        steps, e.g. an evaluation between epochs); what was captured before is cleared."""
        self.clear()
        self._paused = True
        try:
            yield self
        finally:
            self._paused = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __len__(self) -> int:
        return len(self._handles)


# --- shapes -----------------------------------------------------------------------------------


@torch.no_grad()
def feature_shapes(
    model: nn.Module, input_shape: Iterable[int], names: Iterable[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """The per-sample shape of each named feature of ``model``, from one dummy forward pass.

    ``input_shape`` is one sample's shape without the batch dimension, e.g. ``(1, 8, 8)``.
    ``names`` defaults to ``model.feature_names`` (kdlib's models) or else every module name.
    Returns ``{name: shape}`` without the batch dimension, e.g. ``{"block1": (8, 4, 4), ...}``:
    ``shape[0]`` is the channel count an adapter needs. The model is run in eval mode on zeros
    (its mode is restored) and the hooks are removed afterwards.
    """
    model_ = unwrap(model)
    if names is None:
        names = getattr(model_, "feature_names", None) or module_names(model_)
    device = next((p.device for p in model_.parameters()), torch.device("cpu"))
    x = torch.zeros(2, *tuple(input_shape), device=device)
    was_training = model_.training
    model_.eval()
    try:
        with FeatureTaps(model_, names, detach=True) as taps:
            model_(x)
            shapes = {name: tuple(taps[name].shape[1:]) for name in taps.names}
    finally:
        model_.train(was_training)
    return shapes


# --- FitNets hints ----------------------------------------------------------------------------


def make_adapter(
    student_channels: int,
    teacher_channels: int,
    kind: str = "conv",
    identity_if_equal: bool = True,
) -> nn.Module:
    """The FitNets regressor that maps a student feature to the teacher's width.

    ``kind="conv"``: a 1x1 ``nn.Conv2d(student_channels, teacher_channels)`` for ``(N, C, H, W)``
    maps; ``kind="linear"``: an ``nn.Linear`` for ``(N, D)`` vectors. When the widths match and
    ``identity_if_equal`` is true there is nothing to learn: ``nn.Identity()``. The adapter's
    parameters are trained with the student and are not part of the exported student.
    """
    for label, value in (
        ("student_channels", student_channels),
        ("teacher_channels", teacher_channels),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if kind not in ("conv", "linear"):
        raise ValueError(f"kind must be 'conv' (4-d feature maps) or 'linear' (2-d), got {kind!r}")
    if identity_if_equal and student_channels == teacher_channels:
        return nn.Identity()
    if kind == "conv":
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    return nn.Linear(student_channels, teacher_channels)


def _check_feature(
    feature: torch.Tensor, name: str, dims: tuple[int, ...] = (2, 4), check: bool = True
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``feature`` is a non-empty floating tensor of
    one of the ranks ``dims``; with ``check``, also unless every value is finite (one
    host-device synchronisation)."""
    if not isinstance(feature, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(feature).__name__}")
    if feature.dim() not in dims:
        kinds = {2: "(N, D) vectors", 4: "(N, C, H, W) maps"}
        wanted = " or ".join(kinds.get(d, f"{d}-d tensors") for d in dims)
        raise ValueError(f"{name} must be {wanted}, got shape {tuple(feature.shape)}")
    if feature.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(feature.shape)}): no sample")
    if feature.numel() == 0:
        raise ValueError(f"{name} has no element (shape {tuple(feature.shape)})")
    if not feature.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {feature.dtype}")
    if check and not bool(torch.isfinite(feature).all()):
        bad = int((~torch.isfinite(feature)).sum())
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")


def resize_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize an ``(N, C, H, W)`` map to ``size = (H', W')``.

    Shrinking uses adaptive average pooling (each output pixel is the mean of the input pixels
    it covers); growing uses bilinear interpolation. Both are per-channel linear maps, so they
    commute with a 1x1 adapter. The same size returns ``feature`` itself.
    """
    size = tuple(size)
    if tuple(feature.shape[-2:]) == size:
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


def hint_loss(
    student_feature: torch.Tensor,
    teacher_feature: torch.Tensor,
    adapter: nn.Module | None = None,
    check: bool = True,
) -> torch.Tensor:
    """FitNets hint loss: ``mean((resize(r(F_S)) - F_T)^2)`` over all elements.

    Args:
        student_feature: ``(N, C_S, H_S, W_S)`` map or ``(N, D_S)`` vector (carries the gradient).
        teacher_feature: ``(N, C_T, H_T, W_T)`` or ``(N, D_T)``; detached here.
        adapter: the regressor ``r`` (see :func:`make_adapter`) taking ``C_S`` to ``C_T``;
            ``None`` means identity, which needs ``C_S == C_T``.
        check: refuse features with NaN or inf (one host-device synchronisation).

    The adapted student map is resized to the teacher's ``(H_T, W_T)`` (:func:`resize_to`)
    when the spatial sizes differ. The mean is over ``N * C_T * H_T * W_T`` elements, like
    ``nn.MSELoss()`` in FitNets' and RepDistiller's code. Computed in float32. Identical
    features give exactly 0.

    Raises:
        ValueError: an empty batch, NaN or inf in a feature, batch sizes differ, one feature is
            a map and the other a vector, or the widths differ after the adapter (the message
            says which adapter would fit).
    """
    _check_feature(student_feature, "student_feature", check=check)
    _check_feature(teacher_feature, "teacher_feature", check=check)
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch-size mismatch: student feature has {student_feature.shape[0]} samples, "
            f"teacher feature has {teacher_feature.shape[0]}"
        )
    if student_feature.dim() != teacher_feature.dim():
        raise ValueError(
            f"feature rank mismatch: student feature {tuple(student_feature.shape)} vs teacher "
            f"feature {tuple(teacher_feature.shape)}; tap layers of the same kind (both maps or "
            f"both vectors)"
        )
    s = student_feature
    if adapter is not None:
        if isinstance(adapter, nn.Conv2d) and s.dim() != 4:
            raise ValueError(
                f"a conv adapter needs (N, C, H, W) maps, got shape {tuple(s.shape)}; use "
                f"make_adapter(..., kind='linear') for vectors"
            )
        if isinstance(adapter, nn.Linear) and s.dim() != 2:
            raise ValueError(
                f"a linear adapter needs (N, D) vectors, got shape {tuple(s.shape)}; use "
                f"make_adapter(..., kind='conv') for feature maps"
            )
        s = adapter(s)
    if s.shape[1] != teacher_feature.shape[1]:
        kind = "conv" if s.dim() == 4 else "linear"
        raise ValueError(
            f"channel mismatch: student feature has {s.shape[1]} channels"
            f"{' after the adapter' if adapter is not None else ''}, teacher feature has "
            f"{teacher_feature.shape[1]}; pass adapter=make_adapter({student_feature.shape[1]}, "
            f"{teacher_feature.shape[1]}, kind={kind!r})"
        )
    if s.dim() == 4:
        s = resize_to(s, teacher_feature.shape[-2:])
    return F.mse_loss(s.float(), teacher_feature.detach().float())


def _feature(batch, side: str, layer: str) -> torch.Tensor:
    features = getattr(batch, f"{side}_features")
    if layer not in features:
        raise ValueError(
            f"no {side} feature {layer!r} in the batch (tapped: {', '.join(features) or 'none'}); "
            f"the Distiller taps the layers named in the term's {side}_features"
        )
    return features[layer]


class HintTerm(nn.Module):
    """A FitNets hint as a Distiller term: ``weight * hint_loss(F_S[layer], F_T[layer], r)``.

    Args:
        student_layer, teacher_layer: module names to tap (``kdlib.features.module_names``).
        student_channels, teacher_channels: their widths (``feature_shapes(model, ...)[name][0]``).
        weight: the term's weight in the Distiller's total loss.
        name: the key of the term in the Distiller's history (``train_<name>``).
        kind: ``"conv"`` (1x1 conv adapter, for maps) or ``"linear"`` (for vectors).

    ``adapter`` is ``nn.Identity()`` when the widths match, else the learned regressor; as a
    submodule of the term it is moved to the device and trained with the student by the
    Distiller, and it does not end up in the student's ``state_dict``.
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        student_channels: int,
        teacher_channels: int,
        weight: float = 1.0,
        name: str = "hint",
        kind: str = "conv",
    ):
        super().__init__()
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_features = [student_layer]
        self.teacher_features = [teacher_layer]
        self.weight = weight
        self.name = name
        self.adapter = make_adapter(student_channels, teacher_channels, kind)

    @classmethod
    def from_models(
        cls,
        student: nn.Module,
        teacher: nn.Module,
        student_layer: str,
        teacher_layer: str,
        input_shape: Iterable[int],
        **kwargs,
    ) -> HintTerm:
        """Build the term with widths and adapter kind read from one dummy forward pass."""
        s = feature_shapes(student, input_shape, [student_layer])[student_layer]
        t = feature_shapes(teacher, input_shape, [teacher_layer])[teacher_layer]
        if len(s) != len(t):
            raise ValueError(
                f"feature rank mismatch: student {student_layer!r} is {s}, teacher "
                f"{teacher_layer!r} is {t}"
            )
        kwargs.setdefault("kind", "conv" if len(s) == 3 else "linear")
        return cls(student_layer, teacher_layer, s[0], t[0], **kwargs)

    def forward(self, batch) -> torch.Tensor:
        """``batch``: a ``kdlib.distill.Batch`` with the tapped features; returns a scalar."""
        s = _feature(batch, "student", self.student_layer)
        t = _feature(batch, "teacher", self.teacher_layer)
        loss = hint_loss(s, t, self.adapter, check=getattr(batch, "check", True))
        return loss

    def extra_repr(self) -> str:
        return f"{self.student_layer!r} -> {self.teacher_layer!r}, weight={self.weight}"


# --- attention transfer -----------------------------------------------------------------------


def attention_map(feature: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: ``Q = vec(mean_c |F_c|^p) / ||.||_2``.

    ``feature``: ``(N, C, H, W)``. Returns ``(N, H * W)`` float32, each row of unit L2 norm
    (a row that is zero everywhere stays zero). The mean over channels (rather than the sum)
    only rescales the map before the normalisation, so the result is the same; it is what the
    authors' code does. ``p = 2`` is the paper's choice; a larger ``p`` puts more weight on the
    most active positions.
    """
    if not isinstance(feature, torch.Tensor) or feature.dim() != 4:
        shape = tuple(feature.shape) if isinstance(feature, torch.Tensor) else type(feature)
        raise ValueError(f"attention maps need (N, C, H, W) feature maps, got {shape}")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p!r}")
    a = feature.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(a, p=2, dim=1)


def attention_transfer_loss(
    student_feature: torch.Tensor,
    teacher_feature: torch.Tensor,
    p: float = 2,
    reduction: str = "mean",
    check: bool = True,
) -> torch.Tensor:
    """Attention transfer loss between one student map and one teacher map.

    With ``Q_S, Q_T = attention_map(F_S), attention_map(F_T)`` of shape ``(N, H * W)``:

    - ``reduction="mean"`` (default): ``mean_{n,j} (Q_S[n, j] - Q_T[n, j])^2``, the mean over
      the batch *and* the ``H * W`` positions, exactly as the authors' code
      (``(at(x) - at(y)).pow(2).mean()``), RepDistiller and mdistiller compute it. The
      division by ``H * W`` is why the weight is large (beta = 1000, see
      :class:`AttentionTerm`).
    - ``reduction="batchmean"``: ``mean_n ||Q_S[n] - Q_T[n]||_2^2``, the *squared* L2 distance
      between the normalised maps averaged over the batch (``H * W`` times the default). It
      is not the paper's Eq. 2, which sums the unsquared p-norms ``||Q_S - Q_T||_p``; no
      reference implementation uses that form, and the published beta = 1000 belongs to the
      default reduction.

    The channel counts may differ (the map averages over channels). When the spatial sizes
    differ, the larger map is average-pooled down to the smaller one's size
    (``adaptive_avg_pool2d`` on the features, before the attention map), as RepDistiller and
    mdistiller do: a student map smaller than the teacher's pools the teacher down. The
    teacher is detached. ``check`` refuses NaN or inf in the features (one host-device
    synchronisation).

    Raises:
        ValueError: features that are not ``(N, C, H, W)`` maps, an empty batch, NaN or inf,
            batch sizes that differ, an unknown ``reduction``; the message names the argument.
    """
    _check_feature(student_feature, "student_feature", dims=(4,), check=check)
    _check_feature(teacher_feature, "teacher_feature", dims=(4,), check=check)
    if student_feature.shape[0] != teacher_feature.shape[0]:
        raise ValueError(
            f"batch-size mismatch: student feature has {student_feature.shape[0]} samples, "
            f"teacher feature has {teacher_feature.shape[0]}"
        )
    if reduction not in ("mean", "batchmean"):
        raise ValueError(f"reduction must be 'mean' or 'batchmean', got {reduction!r}")
    size = tuple(min(a, b) for a, b in zip(student_feature.shape[-2:], teacher_feature.shape[-2:]))
    s = _pool_to(student_feature, size)
    t = _pool_to(teacher_feature.detach(), size)
    diff = (attention_map(s, p) - attention_map(t, p)).pow(2)
    return diff.mean() if reduction == "mean" else diff.sum(1).mean()


def _pool_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool an ``(N, C, H, W)`` map down to ``size`` (itself if already that size)."""
    if tuple(feature.shape[-2:]) == size:
        return feature
    return F.adaptive_avg_pool2d(feature, size)


class AttentionTerm(nn.Module):
    """Attention transfer as a Distiller term, over one or more (student, teacher) layer pairs.

    The term returns ``sum_j AT_j``, with ``AT_j`` the :func:`attention_transfer_loss` of pair
    ``j`` (mean over the batch and the positions of the squared difference of the normalised
    maps), and the Distiller adds ``weight * sum_j AT_j``: with the default ``weight=1000``
    (beta), this is the training recipe of the published code of Zagoruyko & Komodakis,
    "Paying More Attention to Attention" (ICLR 2017, arXiv:1612.03928), which RepDistiller
    (Tian et al., ICLR 2020) and mdistiller (Zhao et al., CVPR 2022) reproduce:
    ``beta * sum_j mean((Q_S^j - Q_T^j)^2)``, beta = 1000, no factor 1/2. (The paper's Eq. 2
    writes ``beta / 2 * sum_j ||Q_S^j - Q_T^j||_p``; its code uses the form above.)

    Args:
        pairs: ``[(student_layer, teacher_layer), ...]``; channel counts may differ; when the
            spatial sizes differ the larger map is pooled down to the smaller (as the
            references do).
        weight: beta. p: the exponent of the attention map. name: the history key.

    The first batch's features are checked for NaN and inf; later batches are not (no
    host-device synchronisation per step).
    """

    def __init__(
        self,
        pairs: Iterable[tuple[str, str]],
        weight: float = 1000.0,
        p: float = 2,
        name: str = "at",
    ):
        super().__init__()
        self.pairs = [tuple(pair) for pair in pairs]
        if not self.pairs or any(len(pair) != 2 for pair in self.pairs):
            raise ValueError(
                f"pairs must be a non-empty list of (student_layer, teacher_layer), got {pairs!r}"
            )
        self.student_features = [s for s, _ in self.pairs]
        self.teacher_features = [t for _, t in self.pairs]
        self.weight, self.p, self.name = weight, p, name

    def forward(self, batch) -> torch.Tensor:
        """``sum_j attention_transfer_loss(F_S^j, F_T^j, p)`` over the pairs: a scalar."""
        total = 0.0
        for s_layer, t_layer in self.pairs:
            s = _feature(batch, "student", s_layer)
            t = _feature(batch, "teacher", t_layer)
            total = total + attention_transfer_loss(
                s, t, self.p, check=getattr(batch, "check", True)
            )
        return total

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, weight={self.weight}, p={self.p}"
