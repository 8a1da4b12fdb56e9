# ruff: noqa
# Answer set of 05_distillation_vs_finetuning, exercise distillation_report.
# no kdlib implementation: the report is computed from the notebook's own measurements.

# %% alternative: ratios from a helper, checks with their own wording
def distillation_report(student, teacher, baseline):
    def ratio(key, top, bottom):
        return float(top[key]) / float(bottom[key])

    if not student.get("teacher_batches"):
        raise ValueError("the student ran no teacher batch: not a distilled student")
    if student["parameters"] - baseline["parameters"] != 0:
        raise ValueError("the baseline must be the student's architecture without a teacher")
    return dict(
        accuracy_kept=ratio("accuracy", student, teacher),
        parameter_ratio=ratio("parameters", teacher, student),
        speedup=ratio("latency_ms", teacher, student),
        gain_over_baseline=float(student["accuracy"]) - float(baseline["accuracy"]),
    )


# %% bug: the accuracy ratio upside down
def distillation_report(student, teacher, baseline):
    if student["teacher_batches"] <= 0:
        raise ValueError("student: no teacher")
    if baseline["parameters"] != student["parameters"]:
        raise ValueError("baseline: another architecture")
    return {
        "accuracy_kept": teacher["accuracy"] / student["accuracy"],
        "parameter_ratio": teacher["parameters"] / student["parameters"],
        "speedup": teacher["latency_ms"] / student["latency_ms"],
        "gain_over_baseline": student["accuracy"] - baseline["accuracy"],
    }


# %% bug: any baseline accepted (the large model trained from scratch passes)
def distillation_report(student, teacher, baseline):
    if student["teacher_batches"] <= 0:
        raise ValueError("student: no teacher")
    return {
        "accuracy_kept": student["accuracy"] / teacher["accuracy"],
        "parameter_ratio": teacher["parameters"] / student["parameters"],
        "speedup": teacher["latency_ms"] / student["latency_ms"],
        "gain_over_baseline": student["accuracy"] - baseline["accuracy"],
    }


# %% bug: the gain is measured against the teacher
def distillation_report(student, teacher, baseline):
    if student["teacher_batches"] <= 0:
        raise ValueError("student: no teacher")
    if baseline["parameters"] != student["parameters"]:
        raise ValueError("baseline: another architecture")
    return {
        "accuracy_kept": student["accuracy"] / teacher["accuracy"],
        "parameter_ratio": teacher["parameters"] / student["parameters"],
        "speedup": teacher["latency_ms"] / student["latency_ms"],
        "gain_over_baseline": student["accuracy"] - teacher["accuracy"],
    }
