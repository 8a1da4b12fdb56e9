# ruff: noqa
# Answer set of 03_training_loop, exercise distillation_step (kd_loss stays available).

# %% alternative: teacher logits detached instead of no_grad, gradients set to None
def distillation_step(student, teacher, optimizer, x, y, temperature=4.0, alpha=0.7):
    optimizer.zero_grad(set_to_none=True)
    teacher_logits = teacher(x).detach()
    loss = kd_loss(student(x), teacher_logits, y, temperature=temperature, alpha=alpha)
    loss.backward()
    optimizer.step()
    return loss.detach()


# %% alternative: the loss written by hand (labelled samples only in the hard term)
import torch.nn.functional as F


def distillation_step(student, teacher, optimizer, x, y, temperature=4.0, alpha=0.7):
    with torch.no_grad():
        t = teacher(x)
    z = student(x)
    soft = (
        F.kl_div(
            F.log_softmax(z / temperature, 1),
            F.log_softmax(t / temperature, 1),
            log_target=True,
            reduction="batchmean",
        )
        * temperature**2
    )
    mask = y >= 0
    hard = F.cross_entropy(z[mask], y[mask]) if mask.any() else z.sum() * 0.0
    loss = alpha * hard + (1 - alpha) * soft
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


# %% kdlib: one step of kdlib's Distiller
def distillation_step(student, teacher, optimizer, x, y, temperature=4.0, alpha=0.7):
    trainer = Distiller(
        student,
        teacher,
        temperature=temperature,
        alpha=alpha,
        device="cpu",
        optimizer=lambda params: optimizer,
        progress=False,
    )
    return torch.as_tensor(trainer.step((x, y))["loss"]).detach()


# %% bug: no zero_grad, gradients pile up from one step to the next
def distillation_step(student, teacher, optimizer, x, y, temperature=4.0, alpha=0.7):
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = kd_loss(student(x), teacher_logits, y, temperature=temperature, alpha=alpha)
    loss.backward()
    optimizer.step()
    return loss.detach()


# %% bug: alpha and 1 - alpha swapped
def distillation_step(student, teacher, optimizer, x, y, temperature=4.0, alpha=0.7):
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = kd_loss(student(x), teacher_logits, y, temperature=temperature, alpha=1 - alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


# %% bug: no optimizer step
def distillation_step(student, teacher, optimizer, x, y, temperature=4.0, alpha=0.7):
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = kd_loss(student(x), teacher_logits, y, temperature=temperature, alpha=alpha)
    optimizer.zero_grad()
    loss.backward()
    return loss.detach()
