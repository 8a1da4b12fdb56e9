"""kdlib outside the course: one's own arrays and files, Hinton's bias correction, bad input.

Every bad input must raise ``ValueError`` with a message that names the argument, never return
NaN; the tests check both the type and the name.
"""

import gzip
import math

import numpy as np
import pytest
import torch

from kdlib import data
from kdlib.data import few_labels, from_arrays, stratified_split
from kdlib.distill import Distiller, train_supervised
from kdlib.features import attention_transfer_loss, hint_loss
from kdlib.losses import dkd_loss, kd_loss, logit_matching_loss
from kdlib.metrics import accuracy, bias_for_rate, compare, correct_class_bias, predict
from kdlib.models import MLP, SmallCNN
from kdlib.relations import rkd_loss, similarity_preserving_loss
from kdlib.runtime import seed_everything


def _bars(n=320, seed=0):
    """A synthetic 28x28 uint8 image set: 4 classes (horizontal bar, vertical bar, diagonal,
    square) at random positions on a noisy background."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 50, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, q = rng.integers(4, 20, 2)
        if c == 0:
            x[i, r : r + 3, 4:24] = 255
        elif c == 1:
            x[i, 4:24, q : q + 3] = 255
        elif c == 2:
            for k in range(16):
                x[i, 6 + k, 6 + k : 9 + k] = 255
        else:
            x[i, r : r + 7, q : q + 7] = 255
    return x, y


# --- one's own data ---------------------------------------------------------------------------


def test_round_trip_with_ones_own_arrays():
    """from_arrays -> teacher -> distilled student, with the public API alone."""
    x, y = _bars()
    names = ["horizontal", "vertical", "diagonal", "square"]
    ds = from_arrays(x, y, val=0.2, test=0.2, seed=0, class_names=names)
    assert ds.in_channels == 1 and ds.input_shape == (1, 28, 28) and ds.num_classes == 4
    assert ds.class_names == names
    assert len(ds.train) + len(ds.val) + len(ds.test) == len(y)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    # normalised with the training split's statistics
    assert abs(ds.train.x.mean().item()) < 1e-4 and ds.train.x.std().item() == pytest.approx(
        1, 1e-3
    )

    seed_everything(0)
    teacher = SmallCNN(ds.in_channels, ds.num_classes, width=8, depth=2)  # no image_size needed
    train_supervised(teacher, ds.train.loader(32, shuffle=True), epochs=4, lr=1e-2, progress=False)
    student = MLP(ds.in_features, (32,), ds.num_classes)
    Distiller(student, teacher, temperature=4.0, alpha=0.5, lr=3e-3, progress=False).fit(
        ds.train.loader(32, shuffle=True), epochs=4, val_loader=ds.val
    )
    result = compare(student, teacher, ds.test)
    assert result["teacher_accuracy"] > 0.9, result
    assert result["student_accuracy"] > 0.7, result  # chance is 0.25
    assert 0 <= result["teacher_ece"] <= 1 and 0 <= result["student_ece"] <= 1


def test_from_arrays_shapes_labels_and_splits():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    vectors = from_arrays(rng.normal(size=(60, 5)), y.astype(np.int32), val=6, test=0.25)
    assert vectors.input_shape == (5,) and (len(vectors.val), len(vectors.test)) == (6, 15)
    for split in (vectors.train, vectors.val, vectors.test):  # stratified: every class
        assert set(split.y.tolist()) == {0, 1, 2}
    images = from_arrays(torch.rand(60, 3, 4, 4), torch.as_tensor(y, dtype=torch.uint8))
    assert images.in_channels == 3 and images.extra["mean"].shape == (3, 1, 1)
    raw = from_arrays(torch.rand(60, 4, 4) * 7, y, normalize=False, test=0)
    assert len(raw.test) == 0 and raw.train.x.max() <= 7 and raw.input_shape == (1, 4, 4)
    words = from_arrays(rng.normal(size=(60, 2)), np.array(["b", "a", "c"] * 20))
    assert words.class_names == ["a", "b", "c"]
    again = from_arrays(rng.normal(size=(60, 5)), y, seed=0)
    assert torch.equal(again.train.y, from_arrays(rng.normal(size=(60, 5)), y, seed=0).train.y)


@pytest.mark.parametrize(
    "x, y, kwargs, name",
    [
        (np.zeros((10, 2, 2, 2, 2)), np.zeros(10, int), {}, "x must be"),
        (np.zeros((0, 4)), np.zeros(0, int), {}, "x is empty"),
        (np.full((10, 4), np.nan), np.arange(10) % 2, {}, "x contains"),
        (np.zeros((10, 28, 28, 3)), np.arange(10) % 2, {}, "x has shape"),
        (np.zeros((10, 4)), np.arange(9) % 2, {}, "y has 9"),
        (np.zeros((10, 4)), (np.arange(10) % 2).astype(float), {}, "y must be integer"),
        (np.zeros((10, 4)), np.arange(10) % 2 == 0, {}, "y must be integer"),
        (np.zeros((10, 4)), np.arange(10) - 1, {}, "y must be class indices >= 0"),
        (np.zeros((10, 4)), np.arange(10) % 3, {"class_names": ["a", "b"]}, "class_names"),
        (np.zeros((10, 4)), np.arange(10) % 2, {"val": 1.5}, "val"),
        (np.zeros((10, 4)), np.arange(10) % 2, {"test": -1}, "test must be"),
        (np.zeros((10, 4)), np.arange(10) % 2, {"val": 5, "test": 5}, "leave no training"),
        (np.zeros((10, 4)), np.array([0] * 9 + [1]), {}, "in proportion"),
    ],
)
def test_from_arrays_refuses_bad_input(x, y, kwargs, name):
    with pytest.raises(ValueError, match=name):
        from_arrays(x, y, **kwargs)


def test_stratified_split_is_public_and_proportional():
    y = np.repeat(np.arange(4), [40, 20, 20, 20])
    train, val, rest = stratified_split(y, [0.5, 20, None], seed=3)
    assert (len(train), len(val), len(rest)) == (50, 20, 30)
    assert np.bincount(y[train.numpy()]).tolist() == [20, 10, 10, 10]
    assert len(set(train.tolist()) | set(val.tolist()) | set(rest.tolist())) == 100
    with pytest.raises(ValueError, match="sizes add up"):
        stratified_split(y, [80, 30])
    with pytest.raises(ValueError, match="only the last"):
        stratified_split(y, [None, 10])


def test_few_labels_per_class(digits):
    split = few_labels(digits.train, per_class=10, seed=1)
    counts = torch.bincount(split.y[split.y >= 0], minlength=10)
    assert counts.tolist() == [10] * 10 and torch.equal(split.x, digits.train.x)
    assert not torch.equal(split.y, few_labels(digits.train, per_class=10, seed=2).y)
    proportional = few_labels(digits.train, 100)  # the default rule is unchanged
    assert int((proportional.y >= 0).sum()) == 100
    with pytest.raises(ValueError, match="per_class=1000 but class"):
        few_labels(digits.train, per_class=1000)
    with pytest.raises(ValueError, match="either n_labelled or per_class"):
        few_labels(digits.train, 100, per_class=10)
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        few_labels(digits.train, per_class=0)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _mnist_files(folder, parts=("train", "test"), gz=False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    sizes = {"train": 30, "test": 12}
    for part in parts:
        prefix = "train" if part == "train" else "t10k"
        n = sizes[part]
        _write_idx(
            folder / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28))
        )
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10)


def test_mnist_files_read_plain_or_gzipped(tmp_path):
    _mnist_files(tmp_path / "MNIST" / "raw")
    ds = data.load_dataset("mnist", root=tmp_path, val_size=10)
    assert ds.train.x.shape == (20, 1, 28, 28) and len(ds.val) == 10 and len(ds.test) == 12
    assert ds.test.y.tolist() == [i % 10 for i in range(12)] and ds.num_classes == 10
    _mnist_files(tmp_path / "zipped", gz=True)  # files straight in root, as downloaded
    zipped = data.load_dataset("mnist", root=tmp_path / "zipped", val_size=10)
    assert torch.equal(zipped.test.x, ds.test.x)


def test_mnist_test_only_folder_loads_its_test_split(tmp_path):
    _mnist_files(tmp_path / "MNIST" / "raw", parts=("test",))
    with pytest.warns(UserWarning, match="only the test split"):
        ds = data.load_dataset("mnist", root=tmp_path)
    assert len(ds.test) == 12 and len(ds.train) == 0 and len(ds.val) == 0
    assert ds.train.x.shape[1:] == (1, 28, 28)


def test_missing_mnist_file_names_expected_and_found(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    _mnist_files(folder, parts=("test",))
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("mnist", root=tmp_path)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message.split("Expected")[0]  # missing, named
    assert "train-images-idx3-ubyte" in message  # expected
    assert "Found there: t10k-images-idx3-ubyte" in message  # found
    assert "kdlib data download mnist" in message
    with pytest.raises(FileNotFoundError, match="no such folder"):
        data.load_dataset("fashion_mnist", root=tmp_path / "nowhere")


# --- Hinton's bias correction -----------------------------------------------------------------


def test_bias_correction_hits_the_rate_on_held_out_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 10, generator=g) * 2
    logits[:, 3] -= 6.0  # a class the model was never trained to predict
    calibration, held_out = logits[:2000], logits[2000:]
    assert (held_out.argmax(1) == 3).float().mean() < 0.01

    def rate(z, delta):
        z = z.clone()
        z[:, 3] += delta
        return (z.argmax(1) == 3).float().mean().item()

    for wanted in (0.05, 0.1, 0.3):
        delta = bias_for_rate(calibration, 3, wanted)
        assert rate(calibration, delta) == pytest.approx(wanted, abs=1e-6)  # exact where set
        assert rate(held_out, delta) == pytest.approx(wanted, abs=0.025)  # and on new inputs
    assert bias_for_rate(calibration, 3, 0.0) < bias_for_rate(calibration, 3, 0.05)
    assert rate(calibration, bias_for_rate(calibration, 3, 1.0)) == 1.0
    for bad, name in ((dict(rate=1.5), "rate"), (dict(target_class=10), "target_class")):
        kwargs = dict(target_class=3, rate=0.1) | bad
        with pytest.raises(ValueError, match=name):
            bias_for_rate(calibration, **kwargs)


def test_correct_class_bias_shifts_the_output_layer(digits):
    seed_everything(0)
    model = SmallCNN(width=8)
    no_threes = data.omit_classes(digits.train, [3])
    train_supervised(model, no_threes.loader(64, shuffle=True), epochs=3, lr=1e-2, progress=False)
    before = model.head[-1].bias[3].item()
    share = (digits.train.y == 3).float().mean().item()  # the class's prior
    delta = correct_class_bias(model, digits.val.x, 3, share)  # unlabelled inputs
    assert model.head[-1].bias[3].item() == pytest.approx(before + delta)
    z_val, _ = predict(model, digits.val)
    assert (z_val.argmax(1) == 3).float().mean().item() == pytest.approx(share, abs=1 / 397)
    z_test, y_test = predict(model, digits.test)
    assert (z_test.argmax(1) == 3).float().mean().item() == pytest.approx(share, abs=0.05)
    assert accuracy(z_test[y_test == 3], y_test[y_test == 3]) > 0  # some 3s found

    class Softmaxed(torch.nn.Module):  # the output layer is not the last operation
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return torch.log_softmax(self.head(x), 1) * 2

    odd = Softmaxed()
    bias = odd.head.bias.clone()
    with pytest.raises(ValueError, match="layer"):
        correct_class_bias(odd, torch.randn(50, 4), 1, 0.5)
    assert torch.equal(odd.head.bias, bias)  # left unchanged


# --- SmallCNN ---------------------------------------------------------------------------------


def test_small_cnn_infers_the_image_size_or_refuses_a_mismatch():
    model = SmallCNN(width=4, depth=3)
    logits, features = model(torch.randn(2, 1, 28, 28), return_features=True)
    assert logits.shape == (2, 10) and features["block3"].shape[-2:] == (3, 3)
    assert model(torch.randn(2, 1, 8, 8), return_features=True)[1]["block3"].shape[-1] == 2
    fixed = SmallCNN(width=4, image_size=8)
    with pytest.raises(ValueError, match="image_size=28"):
        fixed(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="image_size"):
        SmallCNN(image_size=0)
    assert isinstance(model.head[-1], torch.nn.Linear)


# --- bad input to the losses ------------------------------------------------------------------


def _pair(n=4, c=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), torch.arange(n) % c


def test_empty_batch_is_refused():
    s, t, y = _pair()
    with pytest.raises(ValueError, match="student_logits is an empty batch"):
        kd_loss(s[:0], t[:0], y[:0])
    with pytest.raises(ValueError, match="student_logits is an empty batch"):
        dkd_loss(s[:0], t[:0], y[:0])
    f = torch.randn(0, 3, 4, 4)
    with pytest.raises(ValueError, match="student_feature is an empty batch"):
        hint_loss(f, f)
    with pytest.raises(ValueError, match="student_feature is an empty batch"):
        attention_transfer_loss(f, f)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16, torch.int64])
def test_integer_labels_of_any_dtype_are_accepted(dtype):
    s, t, y = _pair()
    expected_kd = kd_loss(s, t, y)
    expected_dkd = dkd_loss(s, t, y)
    assert torch.equal(kd_loss(s, t, y.to(dtype)), expected_kd)
    assert torch.equal(dkd_loss(s, t, y.to(dtype)), expected_dkd)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_bool_and_float_labels_are_refused(dtype):
    s, t, y = _pair()
    for loss in (kd_loss, dkd_loss):
        with pytest.raises(ValueError, match="labels must be integer class indices"):
            loss(s, t, (y % 2).to(dtype))


def test_bad_temperatures_and_weights_are_refused():
    s, t, y = _pair()
    for tau in (math.inf, -math.inf, math.nan, 0.0, torch.tensor(math.inf)):
        with pytest.raises(ValueError, match="temperature"):
            kd_loss(s, t, y, temperature=tau)
        with pytest.raises(ValueError, match="temperature"):
            dkd_loss(s, t, y, temperature=tau)
    for weight in (math.nan, math.inf, -1.0, torch.tensor(math.nan)):
        with pytest.raises(ValueError, match="tckd_weight"):
            dkd_loss(s, t, y, tckd_weight=weight)
        with pytest.raises(ValueError, match="nckd_weight"):
            dkd_loss(s, t, y, nckd_weight=weight)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, y, alpha=math.nan)
    # 0-d tensors are numbers, as in kd_loss
    assert torch.allclose(
        dkd_loss(s, t, y, tckd_weight=torch.tensor(2.0)), dkd_loss(s, t, y, tckd_weight=2.0)
    )
    assert torch.allclose(kd_loss(s, t, y, alpha=torch.tensor(0.3)), kd_loss(s, t, y, alpha=0.3))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_features_are_refused(bad):
    g = torch.Generator().manual_seed(0)
    good = torch.randn(4, 3, 4, 4, generator=g)
    poisoned = good.clone()
    poisoned[1, 2, 0, 0] = bad
    for loss, name in (
        (hint_loss, "feature"),
        (attention_transfer_loss, "feature"),
        (rkd_loss, "emb"),
        (similarity_preserving_loss, "feature"),
    ):
        with pytest.raises(ValueError, match=f"student_{name} contains 1 non-finite"):
            loss(poisoned, good)
        with pytest.raises(ValueError, match=f"teacher_{name} contains 1 non-finite"):
            loss(good, poisoned)
        assert math.isfinite(loss(good, good.flip(0)).item())


def test_logit_matching_limit_in_float64():
    """float64 logits stay float64, so the high-temperature limit can be followed far."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 10, generator=g) * 3, torch.randn(64, 10, generator=g) * 3
    limit = logit_matching_loss(s.double(), t.double()).item()
    gaps = {}
    for tau in (10.0, 1e4):
        value = kd_loss(s.double(), t.double(), None, temperature=tau, alpha=0.0)
        assert value.dtype == torch.float64
        gaps[tau] = abs(value.item() - limit) / limit
    assert gaps[1e4] < 1e-4 < gaps[10.0]
    float32 = kd_loss(s, t, None, temperature=1e4, alpha=0.0).item()
    assert abs(float32 - limit) / limit > 1e-2  # float32 cancellation, as the docstring says


# ------------------------------------------------- traps a person with their own data meets


def _tiny_split(n=40, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return data.Split(torch.randn(n, 6, generator=g), torch.arange(n) % classes)


@pytest.mark.parametrize(
    "classes, match",
    [
        ([10], "class 10 has no sample"),
        (["3"], "'3'"),
        ([1.0], "1.0"),
        ("3", "'3'"),
        ([True], "True"),
    ],
)
def test_omit_classes_refuses_classes_it_would_silently_ignore(classes, match):
    with pytest.raises(ValueError, match="classes") as err:
        data.omit_classes(_tiny_split(), classes)
    assert match in str(err.value)


def test_omit_classes_takes_one_int_or_several():
    split = _tiny_split()
    one = data.omit_classes(split, 3)
    assert len(one) == 30 and not bool((one.y == 3).any())
    assert len(data.omit_classes(split, np.array([0, 3]))) == 20
    assert len(data.omit_classes(split, (np.int64(1),))) == 30


def test_a_split_is_accepted_wherever_a_loader_is():
    from kdlib.online import mutual_learning

    seed_everything(0)
    split = _tiny_split(64)
    history = train_supervised(MLP(6, (8,), 4), split, epochs=2, val_loader=split, progress=False)
    assert len(history) == 2 and "val_accuracy" in history[-1]
    kd = Distiller(MLP(6, (8,), 4), MLP(6, (8,), 4), device="cpu", progress=False)
    kd.fit(split, epochs=1, val_loader=(split.x, split.y))
    kd.fit(split, epochs=2)  # the same split: the same loader, continued (no fresh shuffle)
    assert kd.epoch == 2 and kd._data[0] is split
    cached = Distiller(MLP(6, (8,), 4), MLP(6, (8,), 4), cache_teacher=True, progress=False)
    cached.fit(split, epochs=2)  # a split becomes a loader with indices for the cache
    assert cached.logit_cache.complete
    assert (
        len(
            mutual_learning(
                [MLP(6, (8,), 4), MLP(6, (5,), 4)], split, epochs=1, device="cpu", progress=False
            )[0]
        )
        == 1
    )


def test_an_empty_validation_split_gives_an_error_not_an_accuracy_of_zero():
    split = _tiny_split(32)
    empty = split.subset([])
    with pytest.raises(ValueError, match="val_loader has no sample"):
        train_supervised(MLP(6, (8,), 4), split, epochs=1, val_loader=empty, progress=False)
    from kdlib.metrics import evaluate

    with pytest.raises(ValueError, match="no labelled sample"):
        evaluate(MLP(6, (8,), 4), empty)


def test_correct_class_bias_takes_a_numpy_array():
    seed_everything(0)
    model = MLP(6, (8,), 4)
    inputs = np.random.default_rng(0).normal(size=(200, 6))  # float64, as numpy makes them
    delta = correct_class_bias(model, inputs, target_class=1, rate=0.25)
    logits, _ = predict(model, (torch.as_tensor(inputs, dtype=torch.float32), torch.zeros(200)))
    assert math.isfinite(delta) and abs((logits.argmax(1) == 1).float().mean().item() - 0.25) < 0.01
    with pytest.raises(ValueError, match="inputs"):
        correct_class_bias(model, np.array(["a", "b"]), target_class=1, rate=0.25)


def test_from_arrays_reads_a_read_only_buffer_without_a_warning(recwarn):
    x, y = _bars(80)
    x_ro, y_ro = np.frombuffer(x.tobytes(), dtype=np.uint8).reshape(x.shape), y.copy()
    y_ro.setflags(write=False)
    assert not x_ro.flags.writeable
    splits = from_arrays(x_ro, y_ro)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 80
    assert not [w for w in recwarn if "writable" in str(w.message)]


def test_confusion_matrix_and_per_class_recall():
    from kdlib.metrics import confusion_matrix, per_class_recall

    logits = torch.eye(4)[[0, 1, 1, 2, 2, 2, 3, 0]] * 5  # predictions 0 1 1 2 2 2 3 0
    labels = torch.tensor([0, 1, 2, 2, 2, -1, 3, 3])  # one unlabelled sample: skipped
    m = confusion_matrix(logits, labels)
    assert m.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 2, 0], [1, 0, 0, 1]]
    recall = per_class_recall(logits, labels)
    assert recall.tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    omitted = per_class_recall(logits, torch.tensor([0, 1, 1, 1, 1, 1, 0, 0]))
    assert math.isnan(omitted[2].item()) and math.isnan(omitted[3].item())  # no sample: NaN


def test_reprs_are_short():
    split = few_labels(_tiny_split(400, classes=10), 20)
    text = repr(split)
    assert len(text) < 120 and "labelled=20" in text and "tensor(" not in text, text
    assert len(repr(split.loader(32))) < 100
    from kdlib.logit_cache import TeacherLogitCache
    from kdlib.training import FirstBatchCheck

    assert len(repr(TeacherLogitCache(torch.device("cpu")))) < 80
    assert repr(FirstBatchCheck()) == "FirstBatchCheck(pending=True)"


def test_seeding_reaches_the_loaders_shuffles():
    split = _tiny_split(64)
    orders = []
    for seed in (1, 2, 1):
        seed_everything(seed)
        orders.append(torch.cat([b[1] for b in split.loader(8, shuffle=True, return_index=True)]))
    assert not torch.equal(orders[0], orders[1])  # two seeds, two orders
    assert torch.equal(orders[0], orders[2])  # the same seed, the same order
    seed_everything(2)
    fixed = torch.cat([b[1] for b in split.loader(8, shuffle=True, seed=1)])
    seed_everything(1)
    assert torch.equal(fixed, torch.cat([b[1] for b in split.loader(8, shuffle=True)]))


def test_numpy_pairs_are_taken_wherever_a_split_is():
    from kdlib.metrics import evaluate

    seed_everything(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)), (np.arange(64) % 4).astype(np.int32)  # float64, int32
    model = MLP(6, (8,), 4)
    history = train_supervised(model, (x, y), epochs=1, val_loader=(x, y), progress=False)
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0
    assert evaluate(model, (x, y))["accuracy"] == history[-1]["val_accuracy"]
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        evaluate(model, (x, y.astype(float)))
