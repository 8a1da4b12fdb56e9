# ruff: noqa
# Answer set of 02_formal_loss, exercise kd_loss_grad.

# %% alternative: one-hot with scatter, the two terms kept apart
def kd_loss_grad(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    n = student_logits.shape[0]
    one_hot = torch.zeros_like(student_logits).scatter_(1, labels[:, None], 1.0)
    hard = F.softmax(student_logits, dim=1) - one_hot
    soft = temperature * (
        F.softmax(student_logits / temperature, dim=1)
        - F.softmax(teacher_logits / temperature, dim=1)
    )
    return alpha * hard / n + (1 - alpha) * soft / n


# %% kdlib: autograd through kdlib's kd_loss
def kd_loss_grad(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    z = student_logits.detach().clone().requires_grad_(True)
    loss = kd_loss(z, teacher_logits, labels, temperature=temperature, alpha=alpha)
    return torch.autograd.grad(loss, z)[0]


# %% kdlib: autograd through kdlib's hard_loss and soft_loss
def kd_loss_grad(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    z = student_logits.detach().clone().requires_grad_(True)
    loss = alpha * hard_loss(z, labels) + (1 - alpha) * soft_loss(z, teacher_logits, temperature)
    return torch.autograd.grad(loss, z)[0]


# %% bug: the 1/N of the batch mean is missing
def kd_loss_grad(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    one_hot = F.one_hot(labels, student_logits.shape[1]).float()
    q = torch.softmax(student_logits / temperature, dim=1)
    p = torch.softmax(teacher_logits / temperature, dim=1)
    return alpha * (torch.softmax(student_logits, dim=1) - one_hot) + (1 - alpha) * temperature * (
        q - p
    )


# %% bug: tau^2 instead of tau in the soft term
def kd_loss_grad(student_logits, teacher_logits, labels, temperature=4.0, alpha=0.7):
    n = student_logits.shape[0]
    one_hot = F.one_hot(labels, student_logits.shape[1]).float()
    q = torch.softmax(student_logits / temperature, dim=1)
    p = torch.softmax(teacher_logits / temperature, dim=1)
    s = torch.softmax(student_logits, dim=1)
    return (alpha * (s - one_hot) + (1 - alpha) * temperature**2 * (q - p)) / n
