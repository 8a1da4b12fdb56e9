"""A small vision transformer and DeiT's distillation token.

``ViT`` cuts an image into ``patch_size x patch_size`` patches, embeds each one linearly (a
convolution with stride ``patch_size``), prepends a learned class token (and, with
``distillation=True``, a learned distillation token), adds learned position embeddings and runs
``depth`` pre-norm transformer blocks (Dosovitskiy et al., "An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale", ICLR 2021, arXiv:2010.11929). The class head reads
the class token.

DeiT (Touvron et al., "Training data-efficient image transformers & distillation through
attention", ICML 2021, arXiv:2012.12877) adds a *distillation token*: a second token that goes
through the same blocks and has its own head, trained to reproduce the teacher (its hard labels
``argmax z_T`` or its soft targets) while the class head learns the true labels
(:func:`deit_loss`). At test time the two heads' logits are averaged.

Output convention (the one DeiT's code uses):

- without a distillation token, ``model(x)`` is ``(N, num_classes)`` in both modes;
- with one, in training mode ``model(x)`` is ``(N, 2, num_classes)``: the class head's and the
  distillation head's logits stacked, what :func:`deit_loss` takes; in eval mode it is their
  average ``(N, num_classes)``, so ``evaluate``, an exported model and a teacher use it as any
  classifier. ``model(x, return_heads=True)`` gives ``(N, 2, num_classes)`` in either mode.

``model(x, return_features=True)`` returns ``(logits, features)`` with the hidden states
``block1 .. blockD`` ``(N, T, dim)`` (``T`` tokens: the class token, the distillation token if
any, then the patches), as the other kdlib models do, and ``grid``: the last hidden state's
patch tokens as a feature map ``(N, dim, g, g)``, ``g = image_size / patch_size``;
``feature_names`` lists them, so ``kdlib.features.FeatureTaps`` taps the same names.
:meth:`ViT.patch_map` turns any hidden state's patch tokens into such a map. A map is what
:func:`kdlib.features.hint_loss` and attention transfer take, so a transformer student's hidden
states can be matched with a CNN teacher's feature maps (feature distillation of hidden states,
as TinyBERT does with its hidden-state loss).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.losses import check_alpha, check_logits, check_temperature, hard_loss, soft_loss

__all__ = ["ViT", "deit_loss", "DEIT_KINDS"]

DEIT_KINDS = ("hard", "soft")


class _SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens (no mask): ``softmax(Q K^T / sqrt(d)) V``.

    Written out (not ``F.scaled_dot_product_attention``): ``torch.func.vmap`` batches it over
    the seeds of a population without a slow fallback, and it exports to any ONNX opset."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.dropout = heads, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, heads, T, d / heads)
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5  # (B, heads, T, T)
        weights = F.dropout(scores.softmax(dim=-1), self.dropout, self.training)
        y = weights @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Linear(mlp_ratio * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _PatchGrid(nn.Module):
    """Patch tokens of a hidden state ``(N, prefix + g * g, dim)`` as a map ``(N, dim, g, g)``."""

    def __init__(self, num_prefix: int, grid: int):
        super().__init__()
        self.num_prefix, self.grid = num_prefix, grid

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        patches = hidden[:, self.num_prefix :]  # (N, g * g, dim)
        return patches.transpose(1, 2).reshape(
            hidden.shape[0], hidden.shape[2], self.grid, self.grid
        )


class ViT(nn.Module):
    """A small vision transformer for ``(N, in_channels, image_size, image_size)`` images.

    Args:
        image_size: side of the (square) input; must be a multiple of ``patch_size``.
        patch_size: side of a patch; ``(image_size / patch_size)^2`` patch tokens.
        in_channels, num_classes: as the other kdlib models.
        dim: token width; ``heads`` must divide it.
        depth: number of pre-norm blocks (the features ``block1 .. blockD``).
        heads: attention heads.
        mlp_ratio: the MLP's hidden width is ``mlp_ratio * dim``.
        distillation: add DeiT's distillation token and its head (see the module docstring
            for what ``forward`` returns then).
        dropout: dropout in the attention and the MLP (training mode only).

    Attributes:
        head: the class head ``nn.Linear(dim, num_classes)`` on the class token.
        head_dist: the distillation head on the distillation token (``None`` without one).
        feature_names: ``("block1", ..., "blockD", "grid")``: the hidden states, then the last
            one's patch tokens as a map ``(N, dim, g, g)`` (:meth:`patch_map`), which feature
            terms that take maps (FitNets hints, attention transfer) match with a CNN's.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 4,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
        distillation: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("dim", dim),
            ("depth", depth),
            ("heads", heads),
            ("mlp_ratio", mlp_ratio),
        ):
            _positive_int(value, name)
        if image_size % patch_size:
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})"
            )
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.dim, self.depth, self.heads, self.distillation = dim, depth, heads, bool(distillation)
        self.num_patches = (image_size // patch_size) ** 2
        self.num_prefix = 2 if distillation else 1  # class token (+ distillation token)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distillation else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.num_patches, dim))
        self.drop = nn.Dropout(dropout)
        for k in range(1, depth + 1):
            setattr(self, f"block{k}", _EncoderBlock(dim, heads, mlp_ratio, dropout))
        self.blocks = tuple(f"block{k}" for k in range(1, depth + 1))
        self.grid = _PatchGrid(self.num_prefix, image_size // patch_size)
        self.feature_names = self.blocks + ("grid",)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distillation else None
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The input tokens ``(N, T, dim)``: class (+ distillation) token, then the patches,
        plus the position embeddings."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ViT takes images (N, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"this ViT was built for {self.image_size}x{self.image_size} images "
                f"(image_size={self.image_size}), got {x.shape[-2]}x{x.shape[-1]}"
            )
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, P, dim)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            prefix.append(self.dist_token.expand(x.shape[0], -1, -1))
        return self.drop(torch.cat(prefix + [patches], dim=1) + self.pos_embed)

    def forward(self, x: torch.Tensor, return_features: bool = False, return_heads: bool = False):
        h = self.tokens(x)
        features = OrderedDict()
        for name in self.blocks:
            h = getattr(self, name)(h)
            features[name] = h
        features["grid"] = self.grid(h)  # a view of the patch tokens, for feature terms
        h = self.norm(h)
        logits = self.head(h[:, 0])
        if self.head_dist is not None:
            heads = torch.stack([logits, self.head_dist(h[:, 1])], dim=1)  # (N, 2, C)
            logits = heads if (self.training or return_heads) else heads.mean(dim=1)
        elif return_heads:
            logits = logits.unsqueeze(1)  # (N, 1, C): the class head only
        return (logits, features) if return_features else logits

    def patch_map(self, hidden: torch.Tensor) -> torch.Tensor:
        """The patch tokens of a hidden state as a feature map, for feature distillation.

        ``hidden`` ``(N, T, dim)`` (a feature ``blockK``, prefix tokens first) becomes
        ``(N, dim, g, g)``, ``g = image_size / patch_size``: token ``(i, j)`` of the patch grid
        at pixel ``(i, j)``. The class and distillation tokens are dropped. A map is what
        :func:`kdlib.features.hint_loss` takes, so the FitNets hint (a 1x1 adapter is a linear
        map applied to every token, TinyBERT's hidden-state loss) matches a transformer
        student's hidden states with a CNN teacher's feature maps (resized to the teacher's
        grid) or with another ViT's.
        """
        g = self.image_size // self.patch_size
        if hidden.dim() != 3 or hidden.shape[1] != self.num_prefix + g * g:
            raise ValueError(
                f"hidden must be a hidden state (N, {self.num_prefix + g * g}, dim) of this ViT, "
                f"got shape {tuple(hidden.shape)}"
            )
        return self.grid(hidden)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, patch_size={self.patch_size}, "
            f"tokens={self.num_prefix}+{self.num_patches}, distillation={self.distillation}"
        )


def deit_loss(
    class_logits: torch.Tensor,
    distill_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "hard",
    temperature: float = 3.0,
    alpha: float = 0.5,
    check: bool = True,
) -> torch.Tensor:
    """DeiT's loss: the class head learns the labels, the distillation head the teacher.

    With ``z_c = class_logits``, ``z_d = distill_logits``, ``z_T = teacher_logits`` (each
    ``(N, C)``) and ``y = labels`` ``(N,)``:

    - ``kind="hard"`` (hard-label distillation, DeiT's best):
      ``(1 - alpha) * CE(z_c, y) + alpha * CE(z_d, argmax z_T)``, DeiT's ``alpha = 1/2``;
    - ``kind="soft"``: ``(1 - alpha) * CE(z_c, y) + alpha * tau^2 * KL(softmax(z_T / tau) ||
      softmax(z_d / tau))`` (:func:`kdlib.losses.soft_loss`), DeiT's ``tau = 3``,
      ``alpha = 0.1``.

    The cross-entropy with the labels is :func:`kdlib.losses.hard_loss` (unlabelled samples,
    ``y = -1``, are skipped); the teacher's hard labels cover every sample. A ViT built with
    ``distillation=True`` gives ``z = model(x)`` ``(N, 2, C)`` in training mode: pass
    ``z[:, 0]`` and ``z[:, 1]``. ``temperature`` is used by ``kind="soft"`` only.

    Returns a scalar. ``check=False`` skips the input checks (the formula is the same code).

    Raises:
        ValueError: naming the argument: shapes that differ, labels out of range, an unknown
            ``kind``, ``temperature <= 0``, ``alpha`` outside ``[0, 1]``.
    """
    if check:
        if kind not in DEIT_KINDS:
            raise ValueError(f"kind must be one of {DEIT_KINDS}, got {kind!r}")
        check_logits(class_logits, "class_logits")
        check_logits(distill_logits, "distill_logits")
        check_logits(teacher_logits, "teacher_logits")
        for name, z in (("distill_logits", distill_logits), ("teacher_logits", teacher_logits)):
            if z.shape != class_logits.shape:
                raise ValueError(
                    f"{name} must have the shape of class_logits {tuple(class_logits.shape)}, "
                    f"got {tuple(z.shape)}"
                )
        check_temperature(temperature)
        check_alpha(alpha)
    ce = hard_loss(class_logits, labels, check=check)
    if kind == "hard":
        teacher_labels = teacher_logits.detach().argmax(dim=-1)
        distill = F.cross_entropy(distill_logits, teacher_labels)
    else:
        distill = soft_loss(distill_logits, teacher_logits.detach(), temperature, check=check)
    return (1.0 - alpha) * ce + alpha * distill
