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
    _, results = course
    # every result the text states is a claim over the seeds (test_every_recorded_claim_holds
    # checks that each holds); a sentence of the text cannot lose its claim unnoticed
    assert {c["id"] for c in results["01_intuition"].claims} == {
        "teacher_above_student",  # section 1: "What the student loses is accuracy"
        "typical_image_confident",  # section 2: "On the typical image the teacher is nearly
        # certain"
        "little_mass_off_top_at_tau1",  # section 3: "At tau = 1 nearly all of the mass sits on
        # one class"
        "dark_knowledge_not_uniform",  # section 4: "The off-diagonal entries are not uniform"
        "lookalikes_get_more",  # "far more probability on a class's look-alike"
        "follows_true_similarity",  # "the whole pattern follows the true similarity"
    }
    assert f["n_seeds"] >= 8


def test_claims_02(course):
    f = figures(course, "02_formal_loss")
    _, results = course
    # sections 4, 6 and 7 state measured results: each is a claim over the seeds
    assert {c["id"] for c in results["02_formal_loss"].claims} == {
        "tau2_keeps_gradient",  # "With tau^2, the soft gradient stays within a small factor"
        "bare_kl_gradient_vanishes",  # "falls by more than two orders of magnitude"
        "bare_kl_slope_near_minus_2",  # "a log-log slope close to the -2 of the expansion"
        "differ_at_tau1",  # "At low temperature the two losses are different objects"
        "coincide_at_high_tau",  # "the gap closes steadily and the two coincide"
        "dkd_tau1_beats_labels",  # "DKD then beats the student trained on its 100 labels alone"
        "dkd_tau1_not_below_kd",  # "and it is not below KD"
        "dkd_tau4_close_to_kd",  # "stays within a point and a half of KD"
        "paper_weights_no_gain",  # "DKD with those weights is no better than KD here"
    }
    assert f["n_seeds"] >= 8
    # identities the text states, checked on the run's own numbers
    # section 2: the tutorial example and kd_loss compute the same number
    assert f["seed_vs_kdlib_max_abs_diff"] < 1e-4
    # section 5: "The ratio is exactly the number of classes"
    assert abs(f["batchmean_over_mean_digits"] - 10) < 1e-4
    # section 7: KL = TCKD + (1 - p_t) NCKD, per sample; KD's weight of NCKD is smaller at tau = 1
    assert f["dkd_identity_max_abs_error"] < 1e-5
    assert f["dkd_median_nckd_weight_tau1"] < f["dkd_median_nckd_weight"]


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
    # "before the correction, the distilled student is blind to 3s too" (also a claim)
    assert f["omitted_kd_recall"] < 0.05
    # the section on paired differences: 8 paired seeds at least in fast mode
    assert f["n_seeds"] >= 8
    # experiment 4: "alpha matters by several points, tau (1 to 4) by less than 2" are claims;
    # "the alpha = 1 column must be the same at every temperature"; "the best cell has alpha < 1"
    assert f["sweep_alpha1_spread"] < 1e-9
    assert f["sweep_best_alpha"] < 1


def test_claims_04(course):
    f = figures(course, "04_feature_distillation")
    # every comparison, the hint's included, over at least 8 paired seeds in fast mode
    assert f["n_seeds"] >= 8 and f["n_feature_seeds"] >= 8
    # section 5: "neither KD + hint nor KD + AT is above KD by more than a point", "the KD + AT
    # students' attention maps are closer to the teacher's" (over every seed): claims, checked
    # by test_every_recorded_claim_holds
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
    # every comparison of the text is a claim over paired seeds (fine-tuning within 2.5 points of
    # the large model from scratch; the teacher's headroom over the small model alone; the
    # distillation gain; the student below its teacher but within 5 points; no gain from
    # fine-tuning the student afterwards): checked by test_every_recorded_claim_holds
    assert f["n_seeds"] >= 8
    # the regime the text states: the large models learn from every label of the new task, the
    # small ones from n_labelled (5 per class)
    assert f["fine_tuning_labels"] > 10 * f["n_labelled"] == 10 * f["small_from_scratch_labels"]
    # "the teacher processed ... batch(es)": a teacher ran during the distillation, none without
    assert f["distillation_teacher_batches"] > 0 == f["small_from_scratch_teacher_batches"]
    # "distillation against fine-tuning: the size and latency columns show the compression"
    # (the parameter counts are fixed by construction: not asserted; the latency is measured)
    assert f["distillation_latency_ms"] < f["fine_tuning_latency_ms"]


def test_claims_06(course):
    f = figures(course, "06_relation_based")
    # section 6: relations alone beat the student alone, do not beat KD; KD + RKD within 3 points
    # of KD; KD + SP no better than KD. Section 7: the untrained student follows the pixels,
    # training moves the geometry towards the teacher's, RKD comes closest to it. All claims
    # over paired seeds (test_every_recorded_claim_holds); stated facts of the run, asserted:
    assert f["n_seeds"] >= 8
    students = ("student_alone", "kd", "rkd", "kd_plus_rkd", "sp", "kd_plus_sp")
    # "the RKD students arrange the images most like the teacher" (the claim compares RKD with
    # the runner-up; here, with every other student)
    c = {
        k[len("distance_correlation_") :]: v
        for k, v in f.items()
        if k.startswith("distance_correlation_")
    }
    assert all(c["rkd"] > c[name] for name in students if name != "rkd")


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
    _, results = course
    # every comparison the text states is a claim over paired seeds, checked by
    # test_every_recorded_claim_holds; the sentences of the text name these (fast mode leaves
    # KD + hint, RKD and DML to full mode)
    ids = {c["id"] for c in results["09_why_it_pays"].claims}
    assert {
        "kd_beats_alone",
        "strong_teacher_teaches_better",
        "weak_teacher_adds_little",
        "no_capacity_gap",
        "alpha_matters",
        "smallest_far_below_teacher",
        "wider_student_absorbs_more",
        "method_kd_helps",
        "method_kd_at_helps",
        "method_multi_teacher_helps",
        "method_born_again_small",
        "dkd_not_above_kd",
        "sp_not_above_kd",
        "method_sp_helps",
        "kd_beats_born_again",
        "consistent_costs_nothing",
        "patience_consistent",
        "clean_cache_ahead_short",
    } <= ids
    assert f["n_seeds"] >= 8
    # the spread of the tau-alpha settings is recorded as a number (it was once lost: the name
    # `spread` was reused by a later cell)
    assert isinstance(f["tau_alpha_spread"], float) and f["tau_alpha_spread"] > 0
    # section 4: the weak teacher's "soft targets are wrong on most of the unlabelled images"
    # (it is below 50% accurate), and "a student can end above a weak teacher"
    stops = sorted(
        int(k[len("strength_epoch") : -len("_teacher")])
        for k in f
        if k.startswith("strength_epoch") and k.endswith("_teacher")
    )
    assert f[f"strength_epoch{stops[0]}_teacher"] < 0.5
    assert f[f"strength_epoch{stops[0]}_student"] > f[f"strength_epoch{stops[0]}_teacher"]


def test_claims_10(course):
    f = figures(course, "10_language_models")
    # the comparisons of the text are claims over 8 paired seeds (forward KL closer to the truth
    # than reverse KL and JSD(0.9); sequence-level KD loses with 1x teacher text and gains with
    # 8x; token-level and on-policy students agree more with the teacher; the on-policy JSD(0.9)
    # student ends further from the truth; token-level and 8x students are better draft models;
    # top-2 with the bucket alone writes invalid sentences, the text's tokens teach the tail
    # back): checked by test_every_recorded_claim_holds. Stated facts of the run, asserted here:
    assert f["n_seeds"] >= 8
    # the toy (deterministic, no seeds): "forward KL spreads the student over both peaks;
    # reverse KL picks one", and the JSDs' global fits are mode seeking like the reverse KL's
    assert f["toy_forward_width"] > f["toy_reverse_width"]
    assert f["toy_reverse_mass_on_its_peak"] > 0.8
    for jsd in ("toy_jsd05_width", "toy_jsd09_width"):
        assert abs(f[jsd] - f["toy_reverse_width"]) < abs(f[jsd] - f["toy_forward_width"])
    # "a student equal to the teacher": the tail bucket keeps all the mass at k = V
    assert f[f"top{f['vocab_size']}_tail_mass"] < 1e-6


def test_claims_11(course):
    f = figures(course, "11_vit_and_edge")
    # the comparisons of the text are claims (soft KD moves the ViT by less than 4 points and
    # does not fall below the hard-label token; the hard-label token, the soft token and
    # hidden-state transfer change little; the teacher stays above; int8 keeps the distilled
    # student's lead and costs it little): checked by test_every_recorded_claim_holds.
    # Stated facts of the run, asserted here:
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
