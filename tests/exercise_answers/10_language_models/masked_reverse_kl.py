# ruff: noqa
# Answer set of 10_language_models, exercise masked_reverse_kl.

# %% alternative: F.kl_div with log targets, masked_select
def masked_reverse_kl(student_logits, teacher_logits, mask):
    log_p_s = torch.log_softmax(student_logits, dim=-1)
    log_p_t = torch.log_softmax(teacher_logits.detach(), dim=-1)
    per_token = F.kl_div(log_p_t, log_p_s, log_target=True, reduction="none").sum(-1)
    return per_token.masked_select(mask).sum() / max(int(mask.sum()), 1)


# %% alternative: a loop over the positions, logsumexp by hand
def masked_reverse_kl(student_logits, teacher_logits, mask):
    total, count = torch.zeros(()), 0
    for b in range(student_logits.shape[0]):
        for t in range(student_logits.shape[1]):
            if mask[b, t]:
                ls = student_logits[b, t] - torch.logsumexp(student_logits[b, t], 0)
                lt = (teacher_logits[b, t] - torch.logsumexp(teacher_logits[b, t], 0)).detach()
                total = total + (ls.exp() * (ls - lt)).sum()
                count += 1
    return total / count if count else total


# %% kdlib: kdlib's token_kd_loss with the reverse divergence
def masked_reverse_kl(student_logits, teacher_logits, mask):
    return token_kd_loss(student_logits, teacher_logits, mask, divergence="reverse")


# %% bug: the forward KL, KL(p_T || p_S)
def masked_reverse_kl(student_logits, teacher_logits, mask):
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    per_token = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


# %% bug: the mean over every position, masked ones counted as zeros
def masked_reverse_kl(student_logits, teacher_logits, mask):
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    return ((log_p_s.exp() * (log_p_s - log_p_t)).sum(-1) * mask).mean()


# %% bug: log of the softmax (nan once a probability underflows)
def masked_reverse_kl(student_logits, teacher_logits, mask):
    p_s = torch.softmax(student_logits, dim=-1)
    p_t = torch.softmax(teacher_logits.detach(), dim=-1)
    per_token = (p_s * (p_s.log() - p_t.log())).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


# %% bug: the teacher is not detached
def masked_reverse_kl(student_logits, teacher_logits, mask):
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits, dim=-1)
    per_token = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


# %% bug: no unmasked position gives nan instead of 0
def masked_reverse_kl(student_logits, teacher_logits, mask):
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    return (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)[mask].mean()


# %% bug: the mean per sentence, then the mean over sentences (short sentences weigh more)
def masked_reverse_kl(student_logits, teacher_logits, mask):
    log_p_s = F.log_softmax(student_logits, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach(), dim=-1)
    per_token = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1) * mask
    per_row = per_token.sum(1) / mask.sum(1).clamp_min(1)
    rows = (mask.sum(1) > 0).sum().clamp_min(1)
    return per_row.sum() / rows
