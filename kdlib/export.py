"""Ship a model: export to ONNX, run it with ONNX Runtime on the CPU, quantise it to int8.

The three steps of taking a trained kdlib model to where it would run::

    path = export_onnx(student, example, "student.onnx")    # torch.onnx (torch.export)
    model = OnnxModel(path)                                   # an ONNX Runtime session
    model(x)                                                  # logits, like student(x)
    int8 = quantize_int8(path, "student.int8.onnx", calibration=splits.val)
    OnnxModel(int8)                                           # the int8 model, same interface

``OnnxModel`` is an ``nn.Module`` without parameters whose forward runs the session, so
:func:`kdlib.metrics.evaluate`, :func:`kdlib.efficiency.measure_latency` and
:func:`kdlib.efficiency.throughput` measure it exactly as they measure the PyTorch model.
:func:`compare_outputs` gives the largest difference between the two on the same inputs.

int8: with ``calibration`` (a split, a loader or a tensor of inputs, the validation split
in the course), ONNX Runtime's *static* post-training quantisation: the weights and the
activations become int8 (QDQ format), the activations' ranges measured on the calibration inputs
(min-max). Without it, *dynamic* quantisation: int8 weights, activation ranges computed at run
time on each batch. (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018, arXiv:1712.05877.)

These need the ``export`` extra (``pip install "kdlib[export]"``: onnx, onnxruntime,
onnxscript); without it every function raises ``ImportError`` saying so, and
:func:`missing_dependencies` names what is missing (the tests and the notebook skip with it).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import logging
import warnings
from collections.abc import Iterable
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "EXPORT_PACKAGES",
    "missing_dependencies",
    "require_export",
    "export_onnx",
    "OnnxModel",
    "quantize_int8",
    "compare_outputs",
    "file_bytes",
]

#: what the ``export`` extra installs (the import names)
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def missing_dependencies() -> list[str]:
    """The packages of the ``export`` extra that are not installed (empty when all are)."""
    return [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]


def require_export() -> None:
    """Raise ``ImportError`` naming the missing packages unless the ``export`` extra is
    installed."""
    missing = missing_dependencies()
    if missing:
        raise ImportError(
            f"exporting to ONNX needs {', '.join(missing)}: install the export extra, "
            f'pip install "kdlib[export]" (or pip install {" ".join(missing)})'
        )


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def _check_example(example) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise TypeError(
            f"example must be one input batch as a tensor, e.g. splits.val.x[:1], got "
            f"{type(example).__name__}"
        )
    if example.dim() < 1 or example.shape[0] < 1:
        raise ValueError(
            f"example must be a batch (N, ...) with N >= 1, got {tuple(example.shape)}"
        )
    if not example.is_floating_point():
        raise ValueError(f"example must be a float tensor (images), got dtype {example.dtype}")
    return example


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    dynamic_batch: bool = True,
    opset: int = 18,
    dynamo: bool = True,
) -> Path:
    """Export ``model`` (in eval mode, on the CPU) to the ONNX file ``path``.

    ``dynamo=True`` (default): ``torch.onnx.export(..., dynamo=True)``, ``torch.export``
    captures the graph, which is then translated to ONNX (opset ``opset``).
    ``dynamo=False``: PyTorch's older TorchScript exporter (tracing), some thirty times faster
    to run on these small models (deprecated by PyTorch, kept while it ships); both give the
    same outputs within float tolerance (``tests/test_export.py``). The model is copied, so
    ``model`` itself is left on its device and in its mode. The graph has one input
    ``"input"`` of ``example``'s shape (the batch dimension dynamic with ``dynamic_batch``) and
    one output ``"logits"``.

    Raises:
        ImportError: the ``export`` extra is missing.
        TypeError: ``model`` is not an ``nn.Module``, ``example`` not a tensor, or the
            model's output (in eval mode) is not one tensor (a tuple, a dict: export a
            wrapper that returns the logits).
        ValueError: ``example`` is not a float batch, or ``opset`` is not an int >= 13.
        RuntimeError: the export itself failed; the message names the model and gives
            ``torch.onnx``'s reason (data-dependent control flow, an unsupported operator).
    """
    require_export()
    _check_model(model)
    example = _check_example(example)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ValueError(f"opset must be an int >= 13, got {opset!r}")
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    example = example.detach().to("cpu", torch.float32)
    with torch.no_grad():
        out = cpu_model(example)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__}(x) returns {type(out).__name__} in eval mode; export_onnx "
            f"needs a model that returns one tensor of logits"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=4096)
                program = torch.onnx.export(
                    cpu_model,
                    (example,),
                    dynamo=True,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_shapes=({0: batch},) if dynamic_batch else None,
                    opset_version=opset,
                    external_data=False,
                    verbose=False,
                )
                program.save(str(path), external_data=False)
            else:
                torch.onnx.export(
                    cpu_model,
                    (example,),
                    str(path),
                    dynamo=False,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}
                    if dynamic_batch
                    else None,
                    opset_version=opset,
                )
    except Exception as err:  # torch.export / the ONNX translation: say which model and why
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RuntimeError(f"could not export {type(model).__name__} to ONNX: {reason}") from err
    return path


def _session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return options


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime on the CPU, with the interface of a kdlib model.

    ``model(x)``: ``x`` a float tensor ``(N, ...)`` (any device; it is copied to the CPU),
    returns the logits as a float32 CPU tensor. No parameters: ``nn.Module`` only so that
    ``evaluate``, ``measure_latency`` and ``throughput`` take it as they take a PyTorch model.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default 1, as the course times things).

    Attributes:
        path, size_bytes (the file's size), session (the ``onnxruntime.InferenceSession``).
    """

    def __init__(self, path: str | Path, threads: int = 1):
        super().__init__()
        require_export()
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: no ONNX file at {path}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        self.path, self.size_bytes = path, path.stat().st_size
        self.session = ort.InferenceSession(
            str(path), _session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        array = x.detach().to("cpu", torch.float32).numpy()
        (logits,) = self.session.run(None, {self.input_name: array})
        return torch.from_numpy(logits)

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.size_bytes:,} bytes"


@contextmanager
def _quiet():
    """ONNX Runtime's quantiser logs advice through the root logger and prints to stderr:
    silence both while it runs (its errors still raise)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _calibration_batches(calibration, batch_size: int) -> list[np.ndarray]:
    if isinstance(calibration, torch.Tensor):
        x = calibration
    elif hasattr(calibration, "x") and isinstance(calibration.x, torch.Tensor):
        x = calibration.x  # a Split or a TensorLoader
    elif isinstance(calibration, Iterable):
        x = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in calibration])
    else:
        raise TypeError(
            f"calibration must be a split, a loader or a tensor of inputs, got "
            f"{type(calibration).__name__}"
        )
    if len(x) == 0:
        raise ValueError("calibration holds no input")
    x = x.detach().to("cpu", torch.float32)
    return [x[i : i + batch_size].numpy() for i in range(0, len(x), batch_size)]


def quantize_int8(
    path: str | Path,
    out_path: str | Path,
    calibration=None,
    *,
    batch_size: int = 64,
    per_channel: bool = False,
    op_types: tuple[str, ...] | None = ("Conv", "MatMul", "Gemm"),
) -> Path:
    """Post-training int8 quantisation of the ONNX model ``path``, written to ``out_path``.

    With ``calibration`` (a ``Split``, a loader or an ``(N, ...)`` tensor: the validation
    split, never the test split): static quantisation, weights and activations int8 (QDQ
    format, signed int8 weights, unsigned int8 activations), each activation's range its min
    and max over the calibration inputs, fed in batches of ``batch_size``. Without it, dynamic
    quantisation (int8 weights of the matrix products; activations quantised per batch at run
    time). ``per_channel``: one weight scale per output channel instead of one per tensor.
    ``op_types``: the operators quantised, by default those that hold weights (convolutions
    and matrix products); ``None``: every operator ONNX Runtime can quantise (static
    quantisation then also wraps additions, layer norms... in quantise/dequantise pairs,
    which on a small transformer makes the file larger than the float one).

    Raises:
        ImportError: the ``export`` extra is missing.
        FileNotFoundError: no file at ``path``.
        TypeError / ValueError: ``calibration`` of another kind, or empty.
    """
    require_export()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    path, out_path = Path(path), Path(out_path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no ONNX file at {path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if calibration is None:
        with _quiet():
            quantize_dynamic(
                str(path),
                str(out_path),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=list(op_types) if op_types else None,
            )
        return out_path
    batches = _calibration_batches(calibration, batch_size)
    import onnx

    input_name = onnx.load(str(path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: b} for b in batches])

        def get_next(self):
            return next(self.items, None)

    with _quiet():  # the calibrator keeps its augmented model in a temporary folder
        quantize_static(
            str(path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(op_types) if op_types else None,
        )
    return out_path


@torch.no_grad()
def compare_outputs(model: nn.Module, exported: nn.Module, inputs: torch.Tensor) -> float:
    """The largest absolute difference between ``model(inputs)`` (eval mode, on the CPU) and
    ``exported(inputs)``, over every sample and class (a float)."""
    _check_model(model)
    _check_model(exported)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
    reference = copy.deepcopy(model).to("cpu").eval()(inputs.to("cpu", torch.float32))
    return float((reference.float() - exported(inputs).float()).abs().max())


def file_bytes(path: str | Path) -> int:
    """Size of a file in bytes (an exported model's size on disk)."""
    return Path(path).stat().st_size
