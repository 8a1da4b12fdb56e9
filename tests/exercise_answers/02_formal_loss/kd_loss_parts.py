# ruff: noqa
# Answer set of 02_formal_loss, exercise kd_loss_parts.

# %% alternative: F.kl_div with log targets and batchmean
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * hard + (1 - alpha) * soft, hard, soft


# %% alternative: cross-entropy minus entropy, written out
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    n = student_logits.shape[0]
    log_q = torch.log_softmax(student_logits / temperature, dim=1)
    log_p = torch.log_softmax(teacher_logits / temperature, dim=1).detach()
    p = log_p.exp()
    soft = temperature * temperature * ((p * log_p).sum() - (p * log_q).sum()) / n
    log_s = torch.log_softmax(student_logits, dim=1)
    hard = -log_s[torch.arange(n), labels].mean()
    return alpha * hard + (1 - alpha) * soft, hard, soft


# %% kdlib: kdlib's kd_loss with return_parts
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    return tuple(
        kd_loss(
            student_logits,
            teacher_logits,
            labels,
            temperature=temperature,
            alpha=alpha,
            return_parts=True,
        )
    )


# %% kdlib: kdlib's hard_loss and soft_loss
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    hard = hard_loss(student_logits, labels)
    soft = soft_loss(student_logits, teacher_logits, temperature)
    return alpha * hard + (1 - alpha) * soft, hard, soft


# %% bug: reduction="mean" averages over the classes too
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="mean") * temperature**2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * hard + (1 - alpha) * soft, hard, soft


# %% bug: no tau^2
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * hard + (1 - alpha) * soft, hard, soft


# %% bug: the teacher is not detached
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(student_logits, labels)
    return alpha * hard + (1 - alpha) * soft, hard, soft


# %% bug: alpha weights the soft term
def kd_loss_parts(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    soft = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * temperature**2
    hard = F.cross_entropy(student_logits, labels)
    return (1 - alpha) * hard + alpha * soft, hard, soft
