"""Every result the notebooks' text states holds in the fast-mode run a student makes.

The notebooks are executed once per session, in fast mode, by the ``course`` fixture
(tests/conftest.py). Each notebook records the results its text states as *claims*
(``kdlib.course.results.Claims``: an estimate over paired seeds with its 95% interval and the
direction the sentence states) and saves them with its headline figures. The registry tests
below fail on any claim that does not hold, on the default seed and on a second one
(``seed=1``); the claims must hold for any seed, not just these two. The functions after them
assert the directional statements that are not yet recorded as claims, on the headline
figures (sentences that hold only in full mode are written conditionally in the notebook,
beside the stored full-mode figures, and are not asserted here). When a claim fails, either
the run changed or the text must change: never loosen the assertion without changing the
sentence.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parent.parent


def figures(course, name: str) -> dict:
    """The headline figures the executed notebook ``name`` saved (skips if it failed)."""
    _, results = course
    result = results[name]
    assert result.status == "ok", result.error
    return result.figures


def notebooks_with_claims() -> list[str]:
    """The solution notebooks that record claims (their code makes a ``Claims(...)``)."""
    return sorted(
        path.stem
        for path in (ROOT / "solutions").glob("*/*.ipynb")
        if "Claims(" in path.read_text(encoding="utf-8")
    )


def failing_claims(results: dict) -> list[str]:
    failures = []
    for name in notebooks_with_claims():
        result = results[name]
        assert result.status == "ok", f"{name}: {result.error}"
        assert result.claims, f"{name} makes Claims but saved none (save_results(..., claims=))"
        failures += [
            f"{name}: {c['id']}: {c['text']} -- {c['verdict']} (expected {c['expected']})"
            for c in result.claims
            if not c["holds"]
        ]
    return failures


@pytest.fixture(scope="module")
def course_seed1(tmp_path_factory):
    """The notebooks that record claims, executed again in fast mode with ``seed=1``."""
    from kdlib.course.run import run_course

    out = tmp_path_factory.mktemp("course_seed1")
    only = ",".join(name.split("_")[0] for name in notebooks_with_claims())
    run = run_course(
        ROOT / "solutions",
        out,
        only=only,
        fast=True,
        device="cpu",
        seed=1,
        timeout=600,
        render_html=False,
        progress=False,
        echo=lambda *a, **k: None,
    )
    return {nb.name: nb for nb in run.notebooks}


def test_every_recorded_claim_holds(course):
    _, results = course
    assert len(notebooks_with_claims()) >= 3  # 03, 04 and 07 at least
    failures = failing_claims(results)
    assert not failures, "claims that do not hold:\n" + "\n".join(failures)


def test_every_recorded_claim_holds_on_a_second_seed(course_seed1):
    failures = failing_claims(course_seed1)
    assert not failures, "claims that do not hold with seed=1:\n" + "\n".join(failures)


def test_claims_rest_on_paired_seeds(course):
    """Every claim about a difference between methods rests on at least 8 paired seeds."""
    _, results = course
    for name in notebooks_with_claims():
        for c in results[name].claims:
            assert c["n_seeds"] >= 8, f"{name}: {c['id']} rests on {c['n_seeds']} seeds"
            assert c["ci95"][0] <= c["estimate"] <= c["ci95"][1], c


def test_claims_01(course):
    f = figures(course, "01_intuition")
    # "What the student loses is accuracy": trained on the labels alone it is below the teacher
    assert f["student_test_accuracy"] < f["teacher_test_accuracy"]
    # "Raising tau moves mass onto the other classes and the entropy climbs towards log C"
    assert f["teacher_entropy_tau1"] < f["teacher_entropy_tau4"]
    # "far more probability on a class's look-alike than on the classes of the other groups",
    # "the whole pattern follows the true similarity"
    assert f["similar_within_over_across"] > 10
    assert f["similar_log_correlation"] > 0.5


def test_claims_02(course):
    f = figures(course, "02_formal_loss")
    # section 2: the tutorial example and kd_loss compute the same number
    assert f["seed_vs_kdlib_max_abs_diff"] < 1e-4
    # section 4: "with tau^2 the norm varies by a small factor, without it by orders of magnitude";
    # "the slope printed above is close to the -2 of the expansion"
    assert f["soft_grad_spread_with_tau2"] < 3 < 100 < f["soft_grad_spread_without_tau2"]
    assert -2.5 < f["bare_kl_grad_loglog_slope"] < -1.5
    # section 5: "The ratio is exactly the number of classes"
    assert abs(f["batchmean_over_mean_digits"] - 10) < 1e-4
    # section 6: "the gap closes steadily and the two coincide"
    assert f["logit_matching_gap_tau_max"] < 0.01 < f["logit_matching_gap_tau1"]
    # section 7: KL = TCKD + (1 - p_t) NCKD, per sample
    assert f["dkd_identity_max_abs_error"] < 1e-5
    assert 0 < f["dkd_median_nckd_weight"] < 1


def test_claims_03(course):
    f = figures(course, "03_training_loop")
    best_student = max(f["full_labels_baseline_mean"], f["full_labels_kd_mean"])
    # experiment 1: "The teacher is well above both students: it has something to teach"
    assert f["teacher_test_accuracy"] > best_student + 0.01
    # "with all the labels, plain distillation gains this tiny student little or nothing"
    assert f["full_labels_gain"] < 0.02
    # experiment 2 ("with scarce labels it helps clearly") and why KD works ("the KD student is
    # well above the label-smoothing one, which stays within a few points of the labels-only
    # baseline"): recorded as claims, checked by test_every_recorded_claim_holds
    # "Even on its own training images the KD student predicts a class other than the
    # teacher's on some of them, and its KL is not 0"; "with 100 labels its agreement is higher
    # than the labels-only student's"
    assert f["full_labels_KD_train_agreement"] < 1 and f["few_labels_KD_train_agreement"] < 1
    assert f["few_labels_KD_agreement"] > f["few_labels_labels_only_agreement"]
    # experiment 3: "the scratch student is blind to 3s before the correction"; "after the bias
    # correction ... the distilled one recognises more 3s than the scratch one" (also claims)
    assert f["omitted_scratch_recall"] < 0.05
    assert f["omitted_kd_recall_corrected"] > f["omitted_scratch_recall_corrected"]
    # the section on paired differences: 8 paired seeds at least in fast mode
    assert f["n_seeds"] >= 8
    # experiment 4: "the alpha = 1 column must be the same at every temperature";
    # "the best cell has alpha < 1"
    assert f["sweep_alpha1_spread"] < 1e-9
    assert f["sweep_best_alpha"] < 1


def test_claims_04(course):
    f = figures(course, "04_feature_distillation")
    # section 6: "the large gain comes from the teacher's outputs: the table shows how far KD
    # lifts the student above training on the labels alone" (also a claim, with its interval)
    assert f["kd_accuracy_mean"] - f["student_alone_accuracy_mean"] > 0.02
    # "the KD + AT student's maps are closer to the teacher's (its printed AT loss is lower than
    # the KD student's)"
    assert f["at_loss_kd_at"] < f["at_loss_kd"]
    # every student stays below its teacher
    for key in ("student_alone", "kd", "kd_hint", "kd_at"):
        assert f[f"{key}_accuracy_mean"] < f["teacher_accuracy"]


def test_claims_05(course):
    f = figures(course, "05_distillation_vs_finetuning")
    # "distillation against fine-tuning: the size and latency columns show the compression"
    # (the parameter counts and the teacher's batch counts are fixed by construction: not
    # asserted; the latency is measured)
    assert f["distillation_latency_ms"] < f["fine_tuning_latency_ms"]


def test_claims_06(course):
    f = figures(course, "06_relation_based")
    # section 6: "both are above the student alone in this run"; "in this run both are below KD"
    for name in ("rkd", "sp"):
        assert f[f"{name}_accuracy_mean"] > f["student_alone_accuracy_mean"]
        assert f[f"{name}_accuracy_mean"] < f["kd_accuracy_mean"]
    # section 7: the untrained student's correlation with the teacher "is not zero" because it
    # follows the pixels; "the student alone correlates better with the teacher than the
    # untrained one"; "RKD alone has the highest correlation"
    c = {
        k[len("distance_correlation_") :]: v
        for k, v in f.items()
        if k.startswith("distance_correlation_")
    }
    assert c["untrained_student"] > 0.2 and c["untrained_vs_pixels"] > 0.5
    assert c["student_alone"] > c["untrained_student"]
    students = ("student_alone", "kd", "kd_plus_rkd", "sp", "kd_plus_sp")
    assert all(c["rkd"] > c[name] for name in students)


def test_claims_07(course):
    f = figures(course, "07_self_and_online")
    _, results = course
    # the comparisons of the text are claims (no born-again gain above 2 points; independent
    # ensemble above one model and above BANE; the taught half-width copy below the one alone;
    # an equal MLP pair within 2 points; with few labels the MLP learning with the CNN is not
    # below itself alone, the CNN gains nothing): checked by
    # test_every_recorded_claim_holds. Every sentence has its claim:
    ids = {c["id"] for c in results["07_self_and_online"].claims}
    assert ids == {
        "born_again_no_gain",
        "independent_ensemble_beats_single",
        "bane_below_independent_ensemble",
        "half_width_taught_below_alone",
        "dml_equal_pair_within_2",
        "dml_weak_partner_not_below",
        "dml_strong_partner_no_gain",
    }
    assert f["n_seeds"] >= 8
    # section 2: the half-width copy has "under a third of the parameters"
    assert 3 * f["half_width_parameters"] < f["full_width_parameters"]


def test_claims_08(course):
    f = figures(course, "08_multi_teacher")
    _, results = course
    teachers = ("cnn_32x2", "cnn_8x3", "mlp_256_128")
    # section 1 no longer states that the averaged ensemble is at least as accurate as its best
    # member (not true on seeds 2 and 3): the ensemble's accuracy is printed, not claimed
    # section 3: "every teacher's student beats the student without a teacher" (also a claim,
    # on the weakest teacher's student over the paired seeds)
    assert all(f[f"student_{t}"] > f["student_no_teacher"] for t in teachers)
    # the other comparisons of section 3 are claims (the ensemble above the weakest teacher's
    # student, not clearly below the best one's; fixed and confidence weights within 2 points
    # of averaging): checked by test_every_recorded_claim_holds. Every sentence has its claim:
    ids = {c["id"] for c in results["08_multi_teacher"].claims}
    assert ids == {
        "every_teacher_helps",
        "ensemble_beats_weakest_teacher",
        "ensemble_near_best_teacher",
        "fixed_weights_near_average",
        "confidence_near_average",
    }
    assert f["n_seeds"] >= 8


def test_claims_09(course):
    f = figures(course, "09_why_it_pays")
    # section 3 (parameters and operations against activations) follows from the two
    # architectures: not a measured result, not asserted; the timings depend on the load
    # section 4: "the student's accuracy rises with the teacher's"; a student "can end above a
    # weak teacher" (the first snapshot)
    stops = sorted(
        int(k[len("strength_epoch") : -len("_teacher")])
        for k in f
        if k.startswith("strength_epoch") and k.endswith("_teacher")
    )
    students = [f[f"strength_epoch{s}_student"] for s in stops]
    assert students == sorted(students)
    assert f[f"strength_epoch{stops[0]}_student"] > f[f"strength_epoch{stops[0]}_teacher"]
    # the capacity gap: "the best teacher for the width-2 student is not the strongest one"
    assert f["gap_best_teacher_width"] != 32
    assert (
        max(f["gap_student_from_width4"], f["gap_student_from_width8"])
        > f["gap_student_from_width32"]
    )
    # section 6: "the smallest students stay far below the teacher"; "as the student grows,
    # distillation closes more of the gap"
    widths = sorted(
        int(k[len("capacity_width") : -len("_kd")])
        for k in f
        if k.startswith("capacity_width") and k.endswith("_kd")
    )
    assert f[f"capacity_width{widths[0]}_kd"] < f["teacher_accuracy"] - 0.2
    kds = [f[f"capacity_width{w}_kd"] for w in widths]
    assert kds == sorted(kds)
    # section 8: "every mode gains from longer training in this run"
    for mode in ("KD", "precomputed_shift", "consistent"):
        assert f[f"patience_{mode}_long"] > f[f"patience_{mode}_short"]


def test_claims_10(course):
    f = figures(course, "10_language_models")
    # "forward KL spreads the student over both peaks; reverse KL picks one"
    assert f["toy_forward_width"] > f["toy_reverse_width"]
    assert f["toy_reverse_mass_on_its_peak"] > 0.8
    # the headline: token-level distillation brings the student closer to the true next-token
    # distribution than the text alone, averaged over the notebook's seeds
    assert f["token_level_kl_truth_mean"] < f["text_alone_kl_truth_mean"]


def test_claims_11(course):
    f = figures(course, "11_vit_and_edge")
    # the five comparisons of the text are claims (soft KD helps the ViT and beats the
    # distillation token's hard labels; the hard-label token changes little; the teacher stays
    # above; the distilled student stays ahead in int8, which costs it little): checked by
    # test_every_recorded_claim_holds. Stated facts of the run, asserted here:
    assert f["n_seeds"] >= 8
    # "on the training images the teacher's decision is the label on all but a small fraction"
    assert f["teacher_label_disagreement_train"] < 0.02
    # the export section ran (the dev extra includes the export extra) and "the exported model
    # computes what PyTorch computes": the largest logit difference is under the tolerance
    assert f["export_ok"] == 1.0
    assert f["max_export_difference"] < 1e-4
    # the float32 ONNX models classify exactly as the eager ones
    for who in ("teacher", "student"):
        assert f[f"{who}_onnx_float_accuracy"] == f[f"{who}_eager_accuracy"]
    # int8 shrinks the teacher's file (the ratios are printed under the table)
    assert f["teacher_int8_bytes"] < 0.5 * f["teacher_onnx_float_bytes"]
