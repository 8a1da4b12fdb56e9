"""A population of S seeds trains each member exactly as that seed trained alone."""

import pytest
import torch
import torch.nn.functional as F

from kdlib import data, models
from kdlib import population as population_module
from kdlib.data import TensorLoader
from kdlib.distill import Distiller, train_supervised
from kdlib.features import AttentionTerm
from kdlib.losses import DKDTerm
from kdlib.population import (
    Population,
    distill_population,
    estimate_bytes,
    train_population,
)
from kdlib.relations import RelationTerm
from kdlib.runtime import seed_everything

SEEDS = [0, 3, 7]
EPOCHS = 2


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def mlp():
    return models.MLP(64, (16,), 10)


def cnn():
    return models.SmallCNN(1, 10, width=4, depth=2)


@pytest.fixture(scope="module")
def teacher(digits):
    seed_everything(11)
    model = models.SmallCNN(1, 10, width=8, depth=2)
    train_supervised(model, digits.train.loader(64, shuffle=True), epochs=2, lr=1e-2, device="cpu")
    return model


def assert_same_state(alone, member, tol=1e-5):
    a, b = alone.state_dict(), member.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=tol, rtol=1e-4), name


def loader(digits, **kw):
    return digits.train.loader(64, shuffle=True, seed=5, **kw)


@pytest.mark.parametrize("model_fn", [mlp, cnn], ids=["MLP", "SmallCNN"])
def test_train_population_equals_each_seed_alone(digits, model_fn):
    pop = train_population(model_fn, SEEDS, loader(digits), EPOCHS, lr=1e-2, device="cpu")
    for k, s in enumerate(SEEDS):
        seed_everything(s)
        alone = model_fn()
        train_supervised(alone, loader(digits), EPOCHS, lr=1e-2, device="cpu")
        assert_same_state(alone, pop.member(k))  # SmallCNN: BatchNorm's running stats too
    # the members differ from each other: only their initialisation did
    a, b = pop.member(0).state_dict(), pop.member(1).state_dict()
    assert not torch.allclose(
        a["head.weight"] if "head.weight" in a else a["head.1.weight"],
        b["head.weight"] if "head.weight" in b else b["head.1.weight"],
    )


LOSSES = {
    "KD": dict(temperature=4.0, alpha=0.5),
    "DKD": dict(alpha=1.0, terms=lambda: [DKDTerm()]),
    "KD-cache": dict(temperature=2.0, alpha=0.3, cache_teacher=True),
}


@pytest.mark.parametrize("model_fn", [mlp, cnn], ids=["MLP", "SmallCNN"])
@pytest.mark.parametrize("method", list(LOSSES))
def test_distill_population_equals_each_seed_alone(digits, teacher, model_fn, method):
    def kwargs():
        kw = dict(LOSSES[method])
        if "terms" in kw:
            kw["terms"] = kw["terms"]()
        return kw

    pop = distill_population(
        model_fn,
        SEEDS,
        teacher,
        loader(digits, return_index=True),
        EPOCHS,
        lr=1e-2,
        device="cpu",
        **kwargs(),
    )
    for k, s in enumerate(SEEDS):
        seed_everything(s)
        alone = model_fn()
        Distiller(alone, teacher, lr=1e-2, device="cpu", **kwargs()).fit(
            loader(digits, return_index=True), EPOCHS
        )
        assert_same_state(alone, pop.member(k))


def test_few_labels_and_per_seed_shuffles_equal_each_seed_alone(digits, teacher):
    few = data.few_labels(digits.train, 100, seed=0)
    pop = distill_population(
        mlp,
        SEEDS,
        teacher,
        few.loader(32, shuffle=True),
        EPOCHS,
        lr=1e-2,
        device="cpu",
        shuffle="per-seed",
    )
    for k, s in enumerate(SEEDS):
        seed_everything(s)
        alone = mlp()
        Distiller(alone, teacher, lr=1e-2, device="cpu").fit(
            few.loader(32, shuffle=True, seed=s), EPOCHS
        )
        assert_same_state(alone, pop.member(k))


def test_evaluate_gives_one_row_per_seed_matching_the_member(digits):
    pop = train_population(
        mlp, SEEDS, loader(digits), 1, lr=1e-2, device="cpu", val_loader=digits.val
    )
    rows = pop.evaluate(digits.test)
    assert [r["seed"] for r in rows] == SEEDS
    from kdlib.metrics import evaluate

    for k, row in enumerate(rows):
        assert abs(row["accuracy"] - evaluate(pop.member(k), digits.test)["accuracy"]) < 1e-9
    assert len(pop.history) == 1 and len(pop.history[0]["val_accuracy"]) == len(SEEDS)
    table = pop.table(val=digits.val, test=digits.test)
    assert [row["seed"] for row in table] == SEEDS
    assert [row["test_accuracy"] for row in table] == [r["accuracy"] for r in rows]
    assert [row["val_accuracy"] for row in table] == pop.history[0]["val_accuracy"]


FEATURE_TERMS = {
    "AT": lambda: [AttentionTerm([("block1", "block1")])],
    "RKD": lambda: [RelationTerm("pool", "pool", "rkd")],
    "SP": lambda: [RelationTerm("block2", "block2", "sp", 100.0)],
}


@pytest.mark.parametrize("method", list(FEATURE_TERMS))
def test_feature_and_relation_terms_are_vectorised_and_equal_each_seed_alone(
    digits, teacher, method
):
    import warnings

    population_module._warned.clear()  # each warning is said once: let it be said again
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*one by one.*")  # no fallback here
        pop = distill_population(
            cnn,
            SEEDS,
            teacher,
            loader(digits),
            EPOCHS,
            lr=1e-2,
            device="cpu",
            terms=FEATURE_TERMS[method](),
        )
    for k, s in enumerate(SEEDS):
        seed_everything(s)
        alone = cnn()
        Distiller(alone, teacher, lr=1e-2, device="cpu", terms=FEATURE_TERMS[method]()).fit(
            loader(digits), EPOCHS
        )
        assert_same_state(alone, pop.member(k))


@pytest.mark.parametrize(
    "seeds, match",
    [
        ([], "seeds is empty"),
        ([0, -1], "seeds must be >= 0"),
        (3, "seeds must be a list"),
        ([0, 0], "distinct"),
        ([0.5], "seeds must be ints"),
    ],
)
def test_bad_seeds_are_refused_by_name(seeds, match):
    with pytest.raises(ValueError, match=match):
        Population(mlp, seeds, device="cpu")


def test_a_population_too_large_is_refused_before_allocating():
    need = estimate_bytes(mlp(), 1000)
    with pytest.raises(MemoryError, match=f"{need:,} bytes"):
        Population(mlp, range(1000), device="cpu", max_bytes=need - 1)
    assert len(Population(mlp, range(4), device="cpu", max_bytes=need)) == 4


def test_label_smoothing_equals_each_seed_alone(digits):
    pop = train_population(
        mlp, SEEDS[:2], loader(digits), 1, lr=1e-2, device="cpu", label_smoothing=0.1
    )
    for k, s in enumerate(SEEDS[:2]):
        seed_everything(s)
        alone = mlp()
        train_supervised(alone, loader(digits), 1, lr=1e-2, device="cpu", label_smoothing=0.1)
        assert_same_state(alone, pop.member(k))


def test_adapters_are_fresh_per_seed_in_the_fallback(digits, teacher):
    from kdlib.features import HintTerm

    def terms():
        return [HintTerm("block2", "block2", 8, 16, weight=1.0)]

    with pytest.warns(UserWarning, match="one by one"):
        pop = distill_population(
            cnn, SEEDS[:2], teacher, loader(digits), 1, lr=1e-2, device="cpu", terms=terms
        )
    for k, s in enumerate(SEEDS[:2]):
        seed_everything(s)
        alone = cnn()
        Distiller(alone, teacher, lr=1e-2, device="cpu", terms=terms()).fit(loader(digits), 1)
        assert_same_state(alone, pop.member(k))


def test_tinygpt_on_text_alone_equals_each_seed_alone():
    from kdlib.lm import SequenceDistiller, next_token_loader

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (48, 9), generator=g)
    mask = torch.ones(48, 8, dtype=torch.bool)
    mask[:, :2] = False  # a prompt that is not predicted

    def gpt():
        return models.TinyGPT(12, context=8, d_model=16, n_layers=1, n_heads=2)

    def text():
        return next_token_loader(tokens, mask, batch_size=16, seed=3)

    pop = train_population(gpt, SEEDS[:2], text(), 2, lr=3e-3, device="cpu")
    for k, s in enumerate(SEEDS[:2]):
        seed_everything(s)
        alone = gpt()
        SequenceDistiller(alone, None, lr=3e-3, device="cpu").fit(text(), 2)
        assert_same_state(alone, pop.member(k))


def test_a_language_teachers_logits_reach_every_member_whole():
    """A teacher's (B, T, V) logits are shared by the members, not indexed by member."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (32, 9), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def gpt():
        return models.TinyGPT(12, context=8, d_model=16, n_layers=1, n_heads=2)

    teacher = gpt().eval()
    seen = []

    def loss(z, t, y):  # z, t: (B, T, V) for one member
        seen.append(t.detach().clone())
        return F.kl_div(
            F.log_softmax(z, -1).flatten(0, 1),
            F.log_softmax(t, -1).flatten(0, 1),
            log_target=True,
            reduction="batchmean",
        )

    loader = TensorLoader(x, y, batch_size=16)
    distill_population(gpt, SEEDS[:2], teacher, loader, 1, lr=1e-3, device="cpu", loss=loss)
    with torch.no_grad():
        expected = [teacher(xb) for xb, _ in loader]
    assert len(seen) == 2 * len(expected)  # two members, every batch
    for k, t in enumerate(seen):
        assert t.shape == (16, 8, 12)
        torch.testing.assert_close(t, expected[k // 2])


def test_train_supervised_with_seeds_gives_a_table_of_each_seed_alone(digits):
    table = train_supervised(
        cnn, loader(digits), EPOCHS, digits.val, lr=1e-2, device="cpu", seeds=SEEDS
    )
    assert [row["seed"] for row in table] == SEEDS
    assert set(table[0]) == {"seed", "val_accuracy", "val_loss"}
    for k, s in enumerate(SEEDS):
        seed_everything(s)
        alone = cnn()
        history = train_supervised(alone, loader(digits), EPOCHS, digits.val, lr=1e-2, device="cpu")
        assert_same_state(alone, table.models()[k])
        assert table[k]["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"], abs=1e-9)
    assert table.column("val_accuracy") == [row["val_accuracy"] for row in table]
    assert len(table.history) == EPOCHS


@pytest.mark.parametrize("shuffle", ["paired", "per-seed"])
def test_distiller_with_seeds_equals_each_seed_alone(digits, teacher, shuffle):
    kw = dict(temperature=4.0, alpha=0.5, lr=1e-2, device="cpu")
    table = Distiller(mlp, teacher, seeds=SEEDS, shuffle=shuffle, **kw).fit(loader(digits), 2)
    for k, s in enumerate(SEEDS):
        seed_everything(s)
        alone = mlp()
        own = loader(digits) if shuffle == "paired" else digits.train.loader(64, True, seed=s)
        Distiller(alone, teacher, **kw).fit(own, 2)
        assert_same_state(alone, table.population.member(k))


@pytest.mark.parametrize("shuffle", ["paired", "per-seed"])
def test_distiller_with_seeds_runs_terms_on_other_modules_seed_by_seed(digits, teacher, shuffle):
    from kdlib.features import HintTerm

    def terms():  # "block2.0" (the convolution) is not one of the named features
        return [HintTerm("block2.0", "block1", 8, 8, weight=1.0)]

    kw = dict(temperature=4.0, alpha=0.5, lr=1e-2, device="cpu")
    seeds = SEEDS[:2]
    table = Distiller(cnn, teacher, seeds=seeds, shuffle=shuffle, terms=terms, **kw).fit(
        loader(digits), 1, val_loader=digits.val
    )
    losses, accuracies = [], []
    for k, s in enumerate(seeds):
        seed_everything(s)
        alone = cnn()
        own = loader(digits) if shuffle == "paired" else digits.train.loader(64, True, seed=s)
        history = Distiller(alone, teacher, terms=terms(), **kw).fit(own, 1, val_loader=digits.val)
        assert_same_state(alone, table.population.member(k))
        losses.append(history[0]["train_loss"])
        accuracies.append(history[0]["val_accuracy"])
    # the population's history: the members' mean loss, one validation accuracy per seed
    record = table.population.history[0]
    assert record["val_accuracy"] == pytest.approx(accuracies)
    assert record["train_loss"] == pytest.approx(sum(losses) / len(losses))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seeds=[]), "seeds is empty"),
        (dict(seeds=0), "seeds must be a list"),
        (dict(seeds=[1, -2]), "seeds must be >= 0"),
        (dict(seeds=[0], amp=True), "amp=True cannot be combined with seeds="),
        (dict(seeds=[0], distributed=True), "distributed=True cannot"),
    ],
)
def test_train_supervised_refuses_bad_seeds_by_name(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_supervised(mlp, loader(digits), 1, device="cpu", **kwargs)


def test_distiller_with_seeds_needs_a_model_function(teacher):
    with pytest.raises(ValueError, match="student: with seeds=, pass a function"):
        Distiller(mlp(), teacher, seeds=[0, 1])
    with pytest.raises(ValueError, match="seeds is empty"):
        Distiller(mlp, teacher, seeds=())
    with pytest.raises(ValueError, match="augment=.* cannot be combined with seeds="):
        Distiller(mlp, teacher, seeds=[0], augment=lambda x: x)


@pytest.mark.parametrize(
    "model_fn",
    [lambda: models.MLP(64, (16,), 10), lambda: models.MLP(64, (32, 16), 10)],
    ids=["MLP-1-hidden", "MLP-2-hidden"],
)
@pytest.mark.parametrize("per_member", [False, True], ids=["shared-batch", "per-member-batch"])
def test_a_folded_mlp_is_the_vmap_computation_bit_for_bit(model_fn, per_member):
    """The course's MLP runs folded (one batched product per layer over the members) and gives
    the logits, features and gradients vmap over functional_call gives, to the last bit: the
    bias gradient is summed per member, as F.linear sums it."""
    seeds = [0, 3, 7]
    g = torch.Generator().manual_seed(0)
    shape = (len(seeds), 32, 1, 8, 8) if per_member else (32, 1, 8, 8)
    x, y = torch.randn(shape, generator=g), torch.randint(0, 10, (32,), generator=g)
    results = []
    for folded in (True, False):
        pop = Population(model_fn, seeds, device="cpu")
        assert pop.folded is not None
        if not folded:
            pop.folded = None  # the vmap path every other model takes
        z, feats = pop.forward(x, train=True, per_member=per_member, features=True)
        loss = F.cross_entropy(z.flatten(0, 1), y.repeat(len(seeds))) + feats["fc1"].square().mean()
        loss.backward()
        results.append((z, feats, {k: v.grad for k, v in pop.params.items()}))
    (za, fa, ga), (zb, fb, gb) = results
    assert torch.equal(za, zb)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert torch.equal(ga[name], gb[name]), name


def test_only_the_course_models_are_folded():
    assert population_module.fold(models.MLP(64, (16,), 10), 3) is not None
    assert population_module.fold(models.SmallCNN(1, 10, width=4, depth=2), 3) is not None
    assert population_module.fold(models.resnet8(10, in_channels=1), 3) is None
    assert population_module.fold(models.TinyGPT(vocab_size=16, context=8), 3) is None
    unbiased = models.MLP(64, (16,), 10)
    unbiased.head = torch.nn.Linear(16, 10, bias=False)
    assert population_module.fold(unbiased, 3) is None
