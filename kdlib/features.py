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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["FeatureTaps", "unwrap", "module_names"]


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
