"""Teacher and student networks, each with a size knob, each able to hand out its features.

- ``MLP``: fully connected; ``hidden=(1200, 1200)`` is Hinton's MNIST teacher, ``(32,)`` a tiny
  student.
- ``SmallCNN``: conv-BN-ReLU blocks with ``width`` and ``depth`` knobs; the course's digits
  teacher.
- ``CifarResNet``: the CIFAR ResNets of the KD literature (He et al. 2016, as used by
  RepDistiller, CRD and DKD): ``resnet8/20/32/56`` with stages of 16/32/64 channels, and the
  four-times-wider ``resnet8x4`` and ``resnet32x4`` (32/64/128/256). Global average pooling
  lets them take 8x8 or 28x28 inputs too.

Every model returns logits ``(N, num_classes)`` from ``model(x)``. ``model(x,
return_features=True)`` returns ``(logits, features)``, where ``features`` is an ordered dict
from the names in ``model.feature_names`` to the outputs of those submodules (the same names
that ``kdlib.features`` taps with hooks), e.g. ``{"layer1": (N, 16, 32, 32), ...}``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "MLP",
    "SmallCNN",
    "CifarResNet",
    "BasicBlock",
    "resnet8",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet8x4",
    "resnet32x4",
    "count_parameters",
    "model_size_bytes",
    "max_pool2x2",
]


class _Staged(nn.Module):
    """A network made of named stages run in order; the stages' outputs are its features."""

    feature_names: tuple[str, ...] = ()

    def stages(self):
        return [(name, getattr(self, name)) for name in self.feature_names]

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = OrderedDict()
        for name, stage in self.stages():
            x = stage(x)
            features[name] = x
        logits = self.head(x)
        return (logits, features) if return_features else logits


class MLP(_Staged):
    """Fully connected classifier: flatten, ``[Linear, ReLU, Dropout] * len(hidden)``, Linear.

    Input ``(N, *)`` (flattened to ``(N, in_features)``), output ``(N, num_classes)``.
    Features: ``fc1 ... fcK`` (the hidden activations, after ReLU), shape ``(N, hidden[k])``.
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: tuple[int, ...] | list[int] = (128,),
        num_classes: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.flatten = nn.Flatten()
        names, width = [], in_features
        for k, h in enumerate(hidden, start=1):
            block = nn.Sequential(nn.Linear(width, h), nn.ReLU(inplace=False))
            if dropout > 0:
                block.append(nn.Dropout(dropout))
            setattr(self, f"fc{k}", block)
            names.append(f"fc{k}")
            width = h
        self.feature_names = tuple(names)
        self.head = nn.Linear(width, num_classes)
        self.hidden = tuple(hidden)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        return super().forward(self.flatten(x), return_features)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class _ChannelsLastMaxPool(torch.autograd.Function):
    """The 2x2, stride-2 max-pool of a contiguous ``(N, C, H, W)`` CPU tensor, computed by
    PyTorch's channels-last kernel and handed back contiguous.

    The values and the argmax of every window are those of ``F.max_pool2d(x, 2)``: both
    kernels scan a window in row-major order and keep the first maximum (a NaN wins), so the
    gradient, sent to the argmax by the same backward kernel, is the same too (tested, ties
    and NaN included). Only the speed differs: the channels-last kernel runs along the
    channels in vector registers, the NCHW kernel one window at a time, so even with the two
    layout changes a pool over small maps costs about half as much, forward and backward
    (``benchmarks/README.md``, populations)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, index = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), [2, 2], [2, 2]
        )
        ctx.save_for_backward(x, index)
        return out.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, index = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False, index.contiguous()
        )


def _plain_cpu_tensor(x: torch.Tensor) -> bool:
    """A contiguous NCHW CPU tensor run eagerly: not traced, compiled or exported, and not
    wrapped by ``torch.func`` (``vmap``, ``grad``), which see plain PyTorch ops instead."""
    if type(x) is not torch.Tensor or x.device.type != "cpu" or not x.is_contiguous():
        return False
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for ``x`` of shape ``(N, C, H, W)``: the same values and
    gradients, through the faster channels-last kernel for an eager contiguous CPU tensor."""
    if x.dim() == 4 and _plain_cpu_tensor(x):
        return _ChannelsLastMaxPool.apply(x)
    return nn.functional.max_pool2d(x, 2)


class _PoolIfWide(nn.Module):
    """2x2 max-pool while the map is at least ``min_size`` pixels on both sides, else identity:
    how much a block pools follows the input, so any image size works."""

    def __init__(self, min_size: int = 4):
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= self.min_size:
            return max_pool2x2(x)
        return x

    def extra_repr(self) -> str:
        return f"kernel_size=2, when H, W >= {self.min_size}"


class SmallCNN(_Staged):
    """``depth`` blocks of conv3x3-BN-ReLU (+ 2x2 max-pool while the map is >= 4 pixels wide),
    channels ``width, 2*width, 4*width, ...``, then global average pooling and a linear head.

    Input ``(N, in_channels, H, W)``, any ``H, W``: each block decides from the size of the map
    it receives whether to pool, so 8x8 digits pool 8 -> 4 -> 2 and 28x28 MNIST
    28 -> 14 -> 7 -> 3. ``image_size`` is optional: given, it is checked, and an input of
    another size raises ``ValueError`` (a model built for 8x8 digits fed 28x28 images is
    usually a mistake); ``None`` (the default) accepts every size.

    Features: ``block1 ... blockD`` (feature maps) and ``pool`` ``(N, channels)``.

    Attributes:
        head: ``nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))``, the
            classifier on the pooled features; ``head[-1]`` is the output layer, whose bias
            :func:`kdlib.metrics.correct_class_bias` shifts and whose input width is
            ``head[-1].in_features``.
        feature_names: ``("block1", ..., "blockD", "pool")``.
        width, depth, image_size: the constructor's arguments.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        depth: int = 2,
        image_size: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        ):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        names, cin = [], in_channels
        for k in range(depth):
            cout = width * 2**k
            block = _conv_bn_relu(cin, cout)
            block.append(_PoolIfWide(4))
            setattr(self, f"block{k + 1}", block)
            names.append(f"block{k + 1}")
            cin = cout
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_names = tuple(names) + ("pool",)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))
        self.width, self.depth, self.image_size = width, depth, image_size

    def forward(self, x: torch.Tensor, return_features: bool = False):
        if x.dim() != 4:
            raise ValueError(
                f"SmallCNN takes images (N, C, H, W), got shape {tuple(x.shape)}; reshape flat "
                f"inputs, e.g. x.view(-1, 1, 8, 8)"
            )
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"this SmallCNN was built for {self.image_size}x{self.image_size} images "
                f"(image_size={self.image_size}), got {x.shape[-2]}x{x.shape[-1]}: pass "
                f"image_size={x.shape[-1]}, or image_size=None to accept any size"
            )
        return super().forward(x, return_features)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity (or 1x1 conv-BN) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(_Staged):
    """CIFAR-style ResNet of depth ``6n + 2``: a 3x3 stem, three stages of ``n`` basic blocks
    (strides 1, 2, 2), global average pooling, a linear head.

    ``channels = (stem, stage1, stage2, stage3)``: ``(16, 16, 32, 64)`` for resnet8..56,
    ``(32, 64, 128, 256)`` for the x4 variants. Features: ``stem``, ``layer1``, ``layer2``,
    ``layer3`` (maps of ``H, H/2, H/4`` pixels) and ``pool`` ``(N, channels[3])``.
    """

    def __init__(
        self,
        depth: int = 20,
        channels: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_channels: int = 3,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n + 2 (8, 14, 20, 32, 56...), got {depth}"
            )
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        )
        cin = channels[0]
        for k, (cout, stride) in enumerate(zip(channels[1:], (1, 2, 2)), start=1):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes)
        self.feature_names = ("stem", "layer1", "layer2", "layer3", "pool")
        self.depth, self.channels = depth, tuple(channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def resnet8(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, (16, 16, 32, 64), num_classes, in_channels)


def resnet20(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, (16, 16, 32, 64), num_classes, in_channels)


def resnet32(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, (16, 16, 32, 64), num_classes, in_channels)


def resnet56(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, (16, 16, 32, 64), num_classes, in_channels)


def resnet8x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(8, (32, 64, 128, 256), num_classes, in_channels)


def resnet32x4(num_classes: int = 100, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, (32, 64, 128, 256), num_classes, in_channels)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def model_size_bytes(model: nn.Module) -> int:
    """Bytes taken by the model's parameters and buffers (e.g. BatchNorm statistics)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


class _CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees positions ``0..t`` only."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.n_heads, self.dropout = n_heads, dropout

    def forward(self, x: torch.Tensor, cache: list | None = None, layer: int = 0) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, heads, T, d / heads)
        if cache is not None:  # keys and values of the earlier positions, then these
            if len(cache) > layer:
                k = torch.cat([cache[layer][0], k], dim=2)
                v = torch.cat([cache[layer][1], v], dim=2)
                cache[layer] = (k, v)
            else:
                cache.append((k, v))
        past = k.shape[2] - t
        # is_causal aligns the mask to the top left: right only when there is no past. With a
        # past, query i (position past + i) sees keys 0..past + i: an explicit mask.
        mask = None
        if past and t > 1:
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
        y = nn.functional.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=not past,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _DecoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = _CausalSelfAttention(d_model, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, cache: list | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A small decoder-only transformer language model (GPT-style), for teachers and students.

    Token and learned position embeddings, ``n_layers`` pre-norm blocks of causal
    self-attention (``F.scaled_dot_product_attention`` with ``is_causal=True``) and a 4x MLP,
    a final LayerNorm, and an output layer that shares its weight with the token embedding
    (weight tying). Width ``d_model`` and depth ``n_layers`` are the size knobs.

    Input: token ids ``(B, T)`` (int64, ``T <= context``). Output: next-token logits
    ``(B, T, vocab_size)``; the logits at position ``t`` depend on tokens ``0..t`` only.

    ``cache``: a list (empty at first) in which every layer keeps the keys and values of the
    positions seen so far (a KV cache, for generation): the next call passes only the new
    tokens, which take the positions after the cached ones. Each generated token then costs
    one position's work instead of a pass over the whole prefix (:func:`kdlib.lm.generate`).
    """

    def __init__(
        self,
        vocab_size: int,
        context: int = 32,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.vocab_size, self.context = vocab_size, context
        self.d_model, self.n_layers, self.n_heads = d_model, n_layers, n_heads
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [_DecoderBlock(d_model, n_heads, dropout) for _ in range(n_layers)]
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # weight tying
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}")
        start = cache[0][0].shape[2] if cache else 0
        if start + tokens.shape[1] > self.context:
            raise ValueError(
                f"sequence of {start + tokens.shape[1]} tokens is longer than the context "
                f"({self.context})"
            )
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        x = self.drop(self.tok(tokens) + self.pos(positions))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.head(self.ln_f(x))


__all__ += ["TinyGPT"]
