"""Every directional claim the notebooks' text makes holds in the fast-mode run a student makes.

The notebooks are executed once per session, in fast mode, by the ``course`` fixture
(tests/conftest.py); each writes its headline figures with ``save_results``. One function per
notebook asserts exactly the directional statements its text states as results (sentences
that hold only in full mode are written conditionally in the notebook, beside the stored
full-mode figures, and are not asserted here). When a claim fails, either the run changed
or the text must change: never loosen the assertion without changing the sentence.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.notebooks


def figures(course, name: str) -> dict:
    """The headline figures the executed notebook ``name`` saved (skips if it failed)."""
    _, results = course
    result = results[name]
    assert result.status == "ok", result.error
    return result.figures


def test_claims_01(course):
    f = figures(course, "01_intuition")
    # "The student costs a fraction of the teacher": fewer parameters
    assert f["student_parameters"] < f["teacher_parameters"]
    # "What the student loses is accuracy": trained on the labels alone it is below the teacher
    assert f["student_test_accuracy"] < f["teacher_test_accuracy"]
    # "Raising tau moves mass onto the other classes and the entropy climbs towards log C"
    assert f["teacher_entropy_tau1"] < f["teacher_entropy_tau4"] < 2.3026
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
    # experiment 2 and the take-aways: "with scarce labels it helps clearly"
    spread = max(f["few_labels_baseline_std"], f["few_labels_kd_std"])
    assert f["few_labels_gain"] > max(0.02, spread)
    # why KD works: "With 100 labels ... the KD student is well above the label-smoothing one,
    # which stays within a few points of the labels-only baseline"
    assert f["few_labels_KD_accuracy"] > f["few_labels_label_smoothing_accuracy"] + 0.02
    smoothing, labels_only = f["few_labels_label_smoothing_accuracy"], f[
        "few_labels_labels_only_accuracy"]
    assert abs(smoothing - labels_only) < 0.05
    # "Even on its own training images the KD student predicts a class other than the
    # teacher's on some of them, and its KL is not 0"; "with 100 labels its agreement is higher
    # than the labels-only student's"
    assert f["full_labels_KD_train_agreement"] < 1 and f["few_labels_KD_train_agreement"] < 1
    assert f["full_labels_KD_kl"] > 0 and f["few_labels_KD_kl"] > 0
    assert f["few_labels_KD_agreement"] > f["few_labels_labels_only_agreement"]
    # experiment 3: "the scratch student is blind to 3s before the correction"; "after the bias
    # correction ... the distilled one recognises more 3s than the scratch one"
    assert f["omitted_scratch_recall"] < 0.05
    assert f["omitted_kd_recall_corrected"] > f["omitted_scratch_recall_corrected"]
    # experiment 4: "the alpha = 1 column must be the same at every temperature";
    # "the best cell has alpha < 1"
    assert f["sweep_alpha1_spread"] < 1e-9
    assert f["sweep_best_alpha"] < 1


def test_claims_04(course):
    f = figures(course, "04_feature_distillation")
    # section 6: "the large gain comes from the teacher's outputs: the table shows how far KD
    # lifts the student above training on the labels alone"
    spread = max(f["kd_accuracy_std"], f["student_alone_accuracy_std"])
    assert f["kd_accuracy_mean"] - f["student_alone_accuracy_mean"] > max(0.02, spread)
    # "the KD + AT student's maps are closer to the teacher's (its printed AT loss is lower than
    # the KD student's)"
    assert f["at_loss_kd_at"] < f["at_loss_kd"]
    # every student stays below its teacher
    for key in ("student_alone", "kd", "kd_hint", "kd_at"):
        assert f[f"{key}_accuracy_mean"] < f["teacher_accuracy"]


def test_claims_05(course):
    f = figures(course, "05_distillation_vs_finetuning")
    # "fine-tuning against large, from scratch: same architecture, same parameters"; "fine-tuning
    # changes what the model knows, not what it costs"
    assert (f["fine_tuning_parameters"] == f["large_from_scratch_parameters"]
            == f["reference_parameters"])
    # "distillation against fine-tuning: the size and latency columns show the compression"
    assert f["distillation_parameters"] < f["fine_tuning_parameters"]
    assert f["distillation_latency_ms"] < f["fine_tuning_latency_ms"]
    # the table of the introduction, measured: a teacher ran for distillation, none for
    # fine-tuning; the student can be fine-tuned afterwards at the same size
    assert f["distillation_teacher_batches"] > 0 == f["fine_tuning_teacher_batches"]
    assert f["distillation_then_fine_tuning_parameters"] == f["distillation_parameters"]
    # fast mode runs more than one seed, so that the table has a spread to read differences by
    assert f["n_seeds"] >= 2


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
    # section 1: "both ensembles are above [generation 0] in this run"
    assert f["bane_accuracy"] > f["born_again_generation0_accuracy"]
    assert f["independent_ensemble_accuracy"] > f["born_again_generation0_accuracy"]
    # section 2: width 4 has "under a third of the parameters" of width 8
    assert f["half_width_parameters"] / f["full_width_parameters"] < 1 / 3
    # section 2 states no sign for the half-width difference (the full-mode figure is shown
    # beside it); it states that "the standard deviations beside the two means are as large as
    # the difference itself"
    spread = max(f["half_width_alone_std"], f["half_width_taught_std"])
    assert spread >= abs(f["half_width_gain"])
    # "... and in the full-mode run too": the stored full-mode record the notebook prints
    from kdlib.course.results import load_full_mode

    full = load_full_mode("07_self_and_online")
    if full is not None:
        g = full["figures"]
        spread = max(g["half_width_alone_std"], g["half_width_taught_std"])
        assert spread >= abs(g["half_width_taught_accuracy"] - g["half_width_alone_accuracy"])
    assert len(f["half_width_gain_per_seed"]) == f["n_seeds"]


def test_claims_08(course):
    f = figures(course, "08_multi_teacher")
    teachers = ("cnn_32x2", "cnn_8x3", "mlp_256_128")
    # section 1: "the averaged ensemble is at least as accurate as its best member"
    best = max(f[f"teacher_{t}_test_accuracy"] for t in teachers)
    assert f["teacher_ensemble_test_accuracy"] >= best
    # section 3: "every teacher helps in this run"
    assert all(f[f"student_{t}"] > f["student_no_teacher"] for t in teachers)
    # section 2: the printed list of teachers weighted more when wrong is the one measured
    inverted = [
        t
        for t in ("cnn-32x2", "cnn-8x3", "mlp-256-128")
        if f[f"confidence_weight_{t.replace('-', '_')}_wrong"]
        > f[f"confidence_weight_{t.replace('-', '_')}_right"]
    ]
    assert inverted == f["confidence_weight_inverted_teachers"]


def test_claims_09(course):
    f = figures(course, "09_why_it_pays")
    # section 3: parameters and operations shrink with the square of the width, activations
    # only linearly. (The timings are not asserted: the text reads them against the operation
    # count and says what a throughput ratio above it means; a test must not depend on load.)
    width_ratio = 32 / f.get("student_width", 8)
    assert f["parameter_ratio"] > width_ratio > 0.5 * f["activation_ratio"]
    assert 0.5 * width_ratio**2 < f["flops_ratio"] < 1.5 * width_ratio**2
    assert f["parameter_ratio"] > f["activation_ratio"]
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
    # "The error falls with k": the top-k approximation loses less as k grows
    errors = [f[k] for k in sorted((k for k in f if k.startswith("top") and
                                    k.endswith("_teacher_kl")),
                                   key=lambda k: int(k[3:].split("_")[0]))]
    assert len(errors) >= 2 and all(a > b for a, b in zip(errors, errors[1:])), errors
