# ruff: noqa
# Answer set of 11_vit_and_edge, exercise deit_hard_answer (my_deit_hard_loss).

# %% alternative: the cross-entropies written out with log_softmax and gather
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    t = teacher_logits.max(dim=1).indices
    ce_y = -class_logits.log_softmax(1).gather(1, labels[:, None]).mean()
    ce_t = -distill_logits.log_softmax(1).gather(1, t[:, None]).mean()
    return (1 - alpha) * ce_y + alpha * ce_t


# %% alternative: the teacher's decision as a one-hot target (soft-target cross-entropy)
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    target = F.one_hot(teacher_logits.argmax(1), teacher_logits.shape[1]).float()
    return (1 - alpha) * F.cross_entropy(class_logits, labels) + alpha * F.cross_entropy(
        distill_logits, target
    )


# %% kdlib: a call to kdlib's deit_loss
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    return deit_loss(class_logits, distill_logits, teacher_logits, labels, "hard", alpha=alpha)


# %% kdlib: kdlib's deit_loss through the module
import kdlib.vit


def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    return kdlib.vit.deit_loss(class_logits, distill_logits, teacher_logits, labels, alpha=alpha)


# %% bug: the heads swapped (the class head learns the teacher)
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    t = teacher_logits.argmax(1)
    return (1 - alpha) * F.cross_entropy(distill_logits, labels) + alpha * F.cross_entropy(
        class_logits, t
    )


# %% bug: soft targets instead of the teacher's decision
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    return (1 - alpha) * F.cross_entropy(class_logits, labels) + alpha * F.cross_entropy(
        distill_logits, teacher_logits.softmax(1)
    )


# %% bug: alpha weights the labels' term
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    t = teacher_logits.argmax(1)
    return alpha * F.cross_entropy(class_logits, labels) + (1 - alpha) * F.cross_entropy(
        distill_logits, t
    )


# %% bug: the sum of the two terms, not the weighted mean
def my_deit_hard_loss(class_logits, distill_logits, teacher_logits, labels, alpha=0.5):
    t = teacher_logits.argmax(1)
    return F.cross_entropy(class_logits, labels) + F.cross_entropy(distill_logits, t)
