"""The Distiller: the seed workflow, a frozen teacher, repeatability, cache, checkpoints, and
the headline result that distillation helps a student with few labels."""

import copy

import pytest
import torch
from torch import nn

from kdlib import data, models
from kdlib.distill import Distiller, freeze, is_frozen, train_supervised
from kdlib.metrics import evaluate, mean_std
from kdlib.runtime import pick_device, seed_everything


@pytest.fixture(scope="module")
def teacher(digits):
    """A small CNN teacher trained on the full training split with shift augmentation."""
    seed_everything(0)
    model = models.SmallCNN(1, 10, width=16, depth=2)
    loader = digits.train.loader(64, shuffle=True, seed=0, transform=data.random_shift)
    train_supervised(model, loader, epochs=25, lr=3e-3, progress=False)
    return model


def test_pick_device_order():
    device = pick_device()
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device.type in ("mps", "cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def test_freeze_keeps_teacher_in_eval_even_when_parent_trains():
    net = models.SmallCNN(1, 10, width=4)
    freeze(net)
    parent = nn.Sequential(net, nn.Linear(10, 2))
    parent.train()
    assert is_frozen(net) and not net.block1[1].training
    assert parent[1].training


def test_teacher_is_bit_for_bit_unchanged(digits, teacher):
    before = copy.deepcopy(teacher.state_dict())  # includes BatchNorm running statistics
    seed_everything(0)
    student = models.MLP(64, (32,), 10)
    Distiller(student, teacher, lr=3e-3, progress=False).fit(
        digits.train.loader(64, shuffle=True), epochs=2
    )
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert is_frozen(teacher)


def _run(digits, teacher, seed=0, epochs=3, **kwargs):
    seed_everything(seed)
    student = models.MLP(64, (32,), 10)
    distiller = Distiller(student, teacher, lr=3e-3, progress=False, **kwargs)
    loader = digits.train.loader(64, shuffle=True, seed=seed, return_index=True)
    history = distiller.fit(loader, epochs=epochs, val_loader=digits.val)
    return student, history


def test_same_seed_same_numbers_on_cpu(digits, teacher):
    a, ha = _run(digits, teacher)
    b, hb = _run(digits, teacher)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(ha) == strip(hb)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert {"train_loss", "train_hard", "train_soft", "val_loss", "val_accuracy"} <= set(ha[0])
    assert ha[-1]["train_loss"] < ha[0]["train_loss"]


def test_amp_and_channels_last_are_harmless_off_gpu(digits, teacher):
    if torch.cuda.is_available():
        pytest.skip("on CUDA these options change the numerics")
    a, ha = _run(digits, teacher, epochs=1)
    b, hb = _run(digits, teacher, epochs=1, amp=True, channels_last=True)
    assert ha[-1]["train_loss"] == hb[-1]["train_loss"]


def test_teacher_logit_cache_runs_teacher_once_per_sample(digits, teacher):
    calls = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        _, cached = _run(digits, teacher, epochs=3, cache_teacher=True)
        cached_samples = sum(calls)
        calls.clear()
        _, plain = _run(digits, teacher, epochs=3)
        plain_samples = sum(calls)
    finally:
        handle.remove()
    assert plain_samples == 3 * 1000
    assert cached_samples == 1000  # one pass over the data
    for a, b in zip(cached, plain):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_cache_refused_when_inputs_change(digits, teacher):
    student = models.MLP(64, (32,), 10)
    random_loader = digits.train.loader(
        64, shuffle=True, transform=data.random_shift, return_index=True
    )
    with pytest.raises(ValueError, match="random transform"):
        Distiller(student, teacher, cache_teacher=True, progress=False).fit(random_loader, 1)
    with pytest.raises(ValueError, match="needs batches"):
        Distiller(student, teacher, cache_teacher=True, progress=False).fit(
            digits.train.loader(64), 1
        )


def test_augment_shows_teacher_and_student_the_same_view(digits, teacher):
    seen = {"teacher": [], "student": []}
    student = models.SmallCNN(width=4)
    hooks = [
        teacher.register_forward_hook(lambda m, i, o: seen["teacher"].append(i[0].clone())),
        student.register_forward_hook(lambda m, i, o: seen["student"].append(i[0].clone())),
    ]
    loader = digits.train.loader(64, shuffle=True, seed=0)
    try:
        seed_everything(0)
        Distiller(student, teacher, augment=data.random_shift, lr=1e-3, progress=False).fit(
            loader, 1
        )
    finally:
        for h in hooks:
            h.remove()
    clean = [xb for xb, _ in loader]
    assert len(seen["teacher"]) == len(seen["student"]) == len(clean)
    for t_view, s_view in zip(seen["teacher"], seen["student"]):
        assert torch.equal(t_view, s_view), "teacher and student must see one augmented view"
    moved = sum(not torch.equal(v, x) for v, x in zip(seen["student"], clean))
    assert moved == len(clean), "every batch is augmented"


def test_cache_with_augment_is_refused_pointing_to_consistent_mode(digits, teacher):
    student = models.MLP(64, (32,), 10)
    with pytest.raises(ValueError, match="cache_teacher=False"):
        Distiller(student, teacher, cache_teacher=True, augment=data.random_shift)
    with pytest.raises(ValueError, match="augment must be a function"):
        Distiller(student, teacher, augment="shift")


def test_checkpoint_and_resume_continue_exactly(digits, teacher, tmp_path):
    straight, _ = _run(digits, teacher, epochs=4)

    seed_everything(0)
    student = models.MLP(64, (32,), 10)
    loader = digits.train.loader(64, shuffle=True, seed=0, return_index=True)
    first = Distiller(student, teacher, lr=3e-3, progress=False)
    first.fit(loader, epochs=2, checkpoint=tmp_path / "ckpt.pt")

    fresh_student = models.MLP(64, (32,), 10)
    fresh_loader = digits.train.loader(64, shuffle=True, seed=123, return_index=True)
    second = Distiller(fresh_student, teacher, lr=3e-3, progress=False)
    history = second.fit(
        fresh_loader, epochs=4, val_loader=None, checkpoint=tmp_path / "ckpt.pt", resume=True
    )
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    for p, q in zip(straight.parameters(), fresh_student.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


class _MeanFeatureTerm:
    """A toy extra term: pulls the mean of the student's hidden features towards the teacher's."""

    name = "feat"
    weight = 0.5
    student_features = ["fc1"]
    teacher_features = ["pool"]

    def __call__(self, batch):
        s = batch.student_features["fc1"].mean()
        t = batch.teacher_features["pool"].mean()
        assert not batch.teacher_features["pool"].requires_grad
        return (s - t) ** 2


def test_extra_terms_get_features_and_hooks_are_released(digits, teacher):
    student = models.MLP(64, (32,), 10)
    distiller = Distiller(student, teacher, terms=[_MeanFeatureTerm()], progress=False)
    for _ in range(2):
        history = distiller.fit(digits.train.loader(128), epochs=distiller.epoch + 1)
    assert "train_feat" in history[-1]
    hooks = lambda m: sum(len(x._forward_hooks) for x in m.modules())
    assert hooks(student) == 0 and hooks(teacher) == 0


def test_several_teachers_need_a_combination_rule(teacher):
    with pytest.raises(ValueError, match="combine_teachers"):
        Distiller(models.MLP(64, (8,), 10), [teacher, teacher], progress=False)


def test_evaluate_and_supervised_training(digits):
    seed_everything(0)
    model = models.MLP(64, (32,), 10)
    before = evaluate(model, digits.test)["accuracy"]
    history = train_supervised(
        model, digits.train.loader(64, shuffle=True), 5, digits.val, lr=3e-3, progress=False
    )
    after = evaluate(model, digits.test)["accuracy"]
    assert after > before + 0.5 and len(history) == 5
    assert model.training  # evaluate restores the mode


def test_distillation_beats_labels_alone_with_few_labels(digits, teacher):
    """Hinton's transfer-set regime: 100 labelled images, the other 900 unlabelled.

    The baseline student sees the 100 labelled images; the distilled student also learns from
    the teacher's soft targets on all 1,000. Averaged over 3 seeds, on the test split.
    """
    teacher_acc = evaluate(teacher, digits.test)["accuracy"]
    transfer = data.few_labels(digits.train, 100, seed=0)
    baseline, distilled = [], []
    for seed in range(3):
        seed_everything(seed)
        alone = models.MLP(64, (32,), 10)
        train_supervised(
            alone,
            data.labelled(transfer).loader(32, shuffle=True, seed=seed),
            epochs=60,
            lr=3e-3,
            progress=False,
        )
        baseline.append(evaluate(alone, digits.test)["accuracy"])

        seed_everything(seed)
        student = models.MLP(64, (32,), 10)
        loader = transfer.loader(64, shuffle=True, seed=seed, return_index=True)
        Distiller(
            student,
            teacher,
            temperature=4.0,
            alpha=0.5,
            lr=3e-3,
            cache_teacher=True,
            progress=False,
        ).fit(loader, epochs=60)
        distilled.append(evaluate(student, digits.test)["accuracy"])
    (b_mean, _), (d_mean, _) = mean_std(baseline), mean_std(distilled)
    print(f"teacher {teacher_acc:.3f}  baseline {b_mean:.3f}  distilled {d_mean:.3f}")
    assert teacher_acc > 0.95
    assert d_mean > b_mean + 0.03


def test_integer_labels_of_any_width_train_and_evaluate(digits, quick_teacher):
    """Labels as numpy gives them (int32) or as image files store them (uint8) work in the
    Distiller, train_supervised and evaluate, with the same result as int64."""
    from kdlib.data import TensorLoader
    from kdlib.distill import Distiller
    from kdlib.metrics import evaluate
    from kdlib.runtime import seed_everything

    results = []
    for dtype in (torch.int64, torch.int32, torch.uint8):
        seed_everything(0)
        student = models.MLP(64, (16,), 10)
        x, y = digits.train.x, digits.train.y.to(dtype)
        loader = TensorLoader(x, y, batch_size=64, shuffle=True, seed=0)
        history = Distiller(student, quick_teacher, lr=3e-3, progress=False, device="cpu").fit(
            loader, epochs=2
        )
        metrics = evaluate(student, (digits.val.x, digits.val.y.to(dtype)))
        results.append((history[-1]["train_loss"], metrics["accuracy"]))
    assert results[1] == pytest.approx(results[0]) and results[2] == pytest.approx(results[0])


class _Syncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that read a value back to the host (a device synchronisation on a GPU)."""

    SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_every_loss_and_term_checks_the_first_batch_of_a_loader_only():
    """One mechanism for all (Distiller.first_batch): the default loss and every kind of term
    (DKD, hints, attention, relations) check the first batch of a loader and none after it."""
    from kdlib.features import AttentionTerm, HintTerm
    from kdlib.losses import DKDTerm
    from kdlib.relations import RelationTerm

    def syncs(n_batches, epochs=1):
        seed_everything(0)
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(16 * n_batches, 1, 8, 8, generator=g), torch.arange(16 * n_batches) % 10
        terms = [
            DKDTerm(weight=0.5),
            HintTerm("block1", "block1", 4, 8, weight=0.1),
            AttentionTerm([("block2", "block2")], weight=0.1),
            RelationTerm("block2", "block2", kind="sp", weight=0.1),
        ]
        teacher = models.SmallCNN(1, 10, width=8, depth=2)
        kd = Distiller(
            models.SmallCNN(1, 10, width=4, depth=2),
            teacher,
            terms=terms,
            device="cpu",
            progress=False,
        )
        loader = data.TensorLoader(x, y, batch_size=16, shuffle=True, seed=0)
        with _Syncs() as counter:
            kd.fit(loader, epochs=epochs)
        assert not kd.first_batch.pending
        return counter.count

    short, long, again = syncs(2), syncs(6), syncs(2, epochs=3)
    assert short > 0  # the first batch is checked
    assert long == short and again == short  # later batches and epochs add no check
