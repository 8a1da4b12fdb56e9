"""Relation-based distillation: RKD (distance and angle) and similarity-preserving KD."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdlib import models
from kdlib.distill import Batch, Distiller
from kdlib.relations import (
    RelationTerm,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    similarity_matrix,
    similarity_preserving_loss,
)
from kdlib.runtime import seed_everything


@pytest.fixture(scope="module")
def teacher(quick_teacher):
    return quick_teacher


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# Three points: a right triangle with legs 3 and 4 (student) and an equilateral one (teacher).
S3 = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
T3 = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, math.sqrt(3.0), 0.0]])


def _random_rotation(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q.float()


def test_pairwise_distances():
    e = torch.randn(6, 5)
    d = pairwise_distances(e)
    assert torch.allclose(d, torch.cdist(e, e), atol=1e-5)
    assert torch.equal(d.diagonal(), torch.zeros(6))


def test_rkd_distance_by_hand():
    # student distances 3, 4, 5 (mean 4), teacher all 2 (mean 2): normalised 3/4, 1, 5/4 vs 1
    diffs = [0.75 - 1, 1 - 1, 1.25 - 1]
    expected = 2 * sum(_huber(x) for x in diffs) / 9  # each pair twice in the 3 x 3 matrix
    assert rkd_distance_loss(S3, T3).item() == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_by_hand():
    # cos at each vertex (i, j, k), j, k the other two; degenerate triplets are 0 on both sides
    def cos_table(p):
        table = {}
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    if i in (j, k):
                        table[i, j, k] = 0.0
                        continue
                    u, v = p[j] - p[i], p[k] - p[i]
                    table[i, j, k] = float(u @ v / (u.norm() * v.norm()))
        return table

    cs, ct = cos_table(S3.double()), cos_table(T3.double())
    expected = sum(_huber(cs[key] - ct[key]) for key in cs) / 27
    assert rkd_angle_loss(S3, T3).item() == pytest.approx(expected, rel=1e-5)
    # the right angle at vertex 0 of the student vs 60 degrees: cos 0 vs 0.5
    assert cs[0, 1, 2] == pytest.approx(0.0, abs=1e-12) and ct[0, 1, 2] == pytest.approx(0.5)
    total = rkd_loss(S3, T3, distance_weight=2.0, angle_weight=3.0)
    assert total.item() == pytest.approx(
        2 * rkd_distance_loss(S3, T3).item() + 3 * expected, rel=1e-5
    )


def test_rkd_invariant_to_scaling_and_rotation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    q = _random_rotation(5, 1)
    base = rkd_loss(s, t)
    assert base.item() > 0.1
    moved = rkd_loss(3.0 * s @ q, 3.0 * t @ q)  # scaled and rotated together
    assert torch.allclose(moved, base, rtol=1e-4)
    # each side separately, and translated: still the same relations
    assert torch.allclose(rkd_loss(0.2 * s @ q + 1.0, t), base, rtol=1e-4)
    # a student that is a scaled, rotated copy of the teacher has nothing left to learn
    assert rkd_loss(5.0 * t @ q, t).item() < 1e-5


def test_rkd_widths_may_differ_but_batches_must_agree():
    s, t = torch.randn(6, 3, requires_grad=True), torch.randn(6, 7, 2, 2, requires_grad=True)
    loss = rkd_loss(s, t)
    loss.backward()
    assert torch.isfinite(s.grad).all() and t.grad is None  # the teacher is detached
    with pytest.raises(ValueError, match="batch-size mismatch: student has 6.*teacher has 5"):
        rkd_loss(torch.randn(6, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        rkd_loss(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"shape \(N, \.\.\.\)"):
        rkd_loss(torch.randn(6), torch.randn(6, 3))


def test_rkd_gradient_is_finite_for_coincident_points():
    s = torch.zeros(4, 3, requires_grad=True)
    with torch.no_grad():
        s[1] = 1.0
    t = torch.randn(4, 3)
    rkd_loss(s, t).backward()
    assert torch.isfinite(s.grad).all()


def test_similarity_preserving_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # G_S = I (rows already unit), G_T = [[2, 2], [2, 2]] -> rows (1, 1) / sqrt(2)
    r = 1 / math.sqrt(2)
    expected = 2 * ((1 - r) ** 2 + r**2) / 4
    assert similarity_preserving_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    g = similarity_matrix(torch.randn(5, 4, 2, 2))
    assert g.shape == (5, 5) and torch.allclose(g.norm(dim=1), torch.ones(5), atol=1e-6)


def test_similarity_preserving_properties():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 10, generator=g)
    base = similarity_preserving_loss(s, t)
    assert base.item() > 0
    assert similarity_preserving_loss(s, s.clone()).item() < 1e-12
    assert torch.allclose(similarity_preserving_loss(4.0 * s, 0.5 * t), base, rtol=1e-5)
    q = _random_rotation(10, 2)
    assert torch.allclose(similarity_preserving_loss(s, t @ q), base, rtol=1e-4)
    # matches the formula with F.normalize written out
    fs, ft = s.flatten(1), t
    gs, gt = F.normalize(fs @ fs.t()), F.normalize(ft @ ft.t())
    assert torch.allclose(base, ((gs - gt) ** 2).sum() / 36)
    with pytest.raises(ValueError, match="batch-size mismatch"):
        similarity_preserving_loss(torch.randn(4, 3), torch.randn(3, 3))


def test_relation_term_protocol():
    term = RelationTerm("pool", "block2", kind="sp", weight=3.0)
    assert term.student_features == ["pool"] and term.teacher_features == ["block2"]
    assert term.name == "sp" and term.weight == 3.0
    with pytest.raises(ValueError, match="kind must be one of 'rkd', 'sp'"):
        RelationTerm("a", "b", kind="crd")
    batch = Batch(torch.rand(4, 1), torch.zeros(4, dtype=torch.long), None, torch.rand(4, 3), None)
    batch.student_features = {"pool": torch.randn(4, 8)}
    with pytest.raises(ValueError, match="no teacher feature 'block2'"):
        term(batch)
    batch.teacher_features = {"block2": torch.randn(4, 32, 2, 2)}
    assert torch.allclose(
        term(batch),
        similarity_preserving_loss(
            batch.student_features["pool"], batch.teacher_features["block2"]
        ),
    )
    rkd = RelationTerm("pool", "block2", distance_weight=1.0, angle_weight=0.0)
    assert torch.allclose(
        rkd(batch),
        rkd_distance_loss(batch.student_features["pool"], batch.teacher_features["block2"]),
    )


@pytest.mark.parametrize("kind, weight", [("rkd", 1.0), ("sp", 3000.0)])
def test_relation_terms_train_a_student(digits, teacher, kind, weight):
    seed_everything(1)
    student = models.MLP(hidden=(32,))
    # an MLP student against a CNN teacher: relations need no adapter across architectures
    term = RelationTerm("fc1", "pool", kind=kind, weight=weight)
    distiller = Distiller(student, teacher, alpha=0.5, terms=[term], lr=3e-3, progress=False)
    history = distiller.fit(digits.train.loader(64, shuffle=True), epochs=3)
    values = [h[f"train_{kind}"] for h in history]
    assert values[-1] < 0.8 * values[0], values
