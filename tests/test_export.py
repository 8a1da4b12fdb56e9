"""Export to ONNX, ONNX Runtime on the CPU and int8 quantisation (kdlib.export).

Skipped, with the reason, where the ``export`` extra (onnx, onnxruntime, onnxscript) is missing.
"""

import pytest
import torch
from torch import nn

from kdlib import export
from kdlib.data import load_digits
from kdlib.metrics import evaluate
from kdlib.models import MLP, SmallCNN
from kdlib.runtime import seed_everything
from kdlib.training import adam
from kdlib.vit import ViT

MISSING = export.missing_dependencies()
needs_export = pytest.mark.skipif(
    bool(MISSING),
    reason=f'the export extra is missing ({", ".join(MISSING)}): pip install "kdlib[export]"',
)

#: exported float32 logits equal PyTorch's to this absolute tolerance (float reassociation only)
TOLERANCE = 1e-4


def _trained(model, digits, epochs=3):
    seed_everything(0)
    opt = adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in digits.train.loader(64, shuffle=True, seed=0):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@needs_export
@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize(
    "make",
    [
        lambda: SmallCNN(1, 10, width=8, depth=2, image_size=8),
        lambda: ViT(),
        lambda: ViT(distillation=True),
        lambda: MLP(64, (32,)),
    ],
    ids=["SmallCNN", "ViT", "ViT-distillation-token", "MLP"],
)
def test_exported_model_equals_pytorch(make, dynamo, digits, tmp_path):
    seed_everything(0)
    model = make().eval()
    path = export.export_onnx(model, digits.val.x[:1], tmp_path / "m.onnx", dynamo=dynamo)
    onnx_model = export.OnnxModel(path)
    # the batch dimension is dynamic: the test split in one batch, and one sample
    assert export.compare_outputs(model, onnx_model, digits.test.x) < TOLERANCE
    assert export.compare_outputs(model, onnx_model, digits.test.x[:1]) < TOLERANCE
    assert onnx_model(digits.test.x).shape == (len(digits.test), 10)
    assert model.training is False and onnx_model.size_bytes == path.stat().st_size


@needs_export
def test_export_leaves_the_model_where_it_was(digits, tmp_path):
    model = ViT(distillation=True).train()
    export.export_onnx(model, digits.val.x[:2], tmp_path / "m.onnx", dynamo=False)
    assert model.training  # a copy was exported in eval mode


@needs_export
def test_int8_accuracy_is_measured_and_close_to_float(digits, tmp_path):
    model = _trained(SmallCNN(1, 10, width=16, depth=2, image_size=8), digits, epochs=5)
    path = export.export_onnx(model, digits.val.x[:1], tmp_path / "m.onnx", dynamo=False)
    static = export.quantize_int8(path, tmp_path / "s.onnx", calibration=digits.val)
    dynamic = export.quantize_int8(path, tmp_path / "d.onnx")
    float_acc = evaluate(export.OnnxModel(path), digits.test, "cpu")["accuracy"]
    assert float_acc == evaluate(model, digits.test, "cpu")["accuracy"]
    assert float_acc > 0.8
    for q in (static, dynamic):
        int8 = export.OnnxModel(q)
        acc = evaluate(int8, digits.test, "cpu")["accuracy"]
        assert acc > float_acc - 0.05, (q.name, acc, float_acc)
        assert export.compare_outputs(model, int8, digits.test.x) > TOLERANCE  # really int8
    # static quantisation stores int8 weights: the file is smaller than the float one
    assert static.stat().st_size < path.stat().st_size


@needs_export
def test_static_quantisation_of_the_vit(digits, tmp_path):
    model = _trained(ViT(), digits, epochs=4)
    path = export.export_onnx(model, digits.val.x[:1], tmp_path / "v.onnx", dynamo=False)
    q = export.quantize_int8(path, tmp_path / "v8.onnx", calibration=digits.val.x)
    float_acc = evaluate(model, digits.test, "cpu")["accuracy"]
    int8_acc = evaluate(export.OnnxModel(q), digits.test, "cpu")["accuracy"]
    assert abs(int8_acc - float_acc) < 0.05, (int8_acc, float_acc)
    # the weights' operators only (the default): the int8 file is smaller than the float one;
    # every operator: quantise/dequantise pairs around additions and norms make it larger
    everything = export.quantize_int8(path, tmp_path / "all.onnx", digits.val, op_types=None)
    assert q.stat().st_size < path.stat().st_size < everything.stat().st_size


@needs_export
def test_what_cannot_be_exported_is_refused_clearly(digits, tmp_path):
    class TwoOutputs(nn.Module):
        def forward(self, x):
            return x.flatten(1), x.mean()

    with pytest.raises(TypeError, match="returns tuple"):
        export.export_onnx(TwoOutputs(), digits.val.x[:1], tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        export.export_onnx(lambda x: x, digits.val.x[:1], tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="example"):
        export.export_onnx(MLP(64, (8,)), digits.val.x[:1].numpy(), tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="example"):
        export.export_onnx(MLP(64, (8,)), torch.zeros(1, 64, dtype=torch.long), tmp_path / "a")
    with pytest.raises(ValueError, match="opset"):
        export.export_onnx(MLP(64, (8,)), digits.val.x[:1], tmp_path / "a.onnx", opset=9)

    class DataDependent(nn.Module):  # control flow on a value: torch.export cannot trace it
        def forward(self, x):
            if x.sum() > 0:
                return x.flatten(1)
            return -x.flatten(1)

    with pytest.raises(RuntimeError, match="could not export DataDependent"):
        export.export_onnx(DataDependent(), digits.val.x[:1], tmp_path / "b.onnx", dynamo=True)
    with pytest.raises(FileNotFoundError, match="path"):
        export.OnnxModel(tmp_path / "none.onnx")
    with pytest.raises(FileNotFoundError, match="path"):
        export.quantize_int8(tmp_path / "none.onnx", tmp_path / "q.onnx")
    path = export.export_onnx(MLP(64, (8,)), digits.val.x[:1], tmp_path / "c.onnx", dynamo=False)
    with pytest.raises(TypeError, match="calibration"):
        export.quantize_int8(path, tmp_path / "q.onnx", calibration=3)


def test_missing_extra_is_named(monkeypatch):
    real_find_spec = export.importlib.util.find_spec
    monkeypatch.setattr(
        export.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a),
    )
    assert export.missing_dependencies() == [
        n for n in export.EXPORT_PACKAGES if n == "onnxruntime" or n in MISSING
    ]
    with pytest.raises(ImportError, match=r'onnxruntime.*pip install "kdlib\[export\]"'):
        export.require_export()
    with pytest.raises(ImportError, match="onnxruntime"):
        export.export_onnx(MLP(64, (8,)), torch.zeros(1, 64), "x.onnx")
