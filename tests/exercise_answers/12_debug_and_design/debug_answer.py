# ruff: noqa
# Answer set of 12_debug_and_design, exercise debug_answer (the loop `distil`).
# Each `bug` is the fixed loop with one of the six planted bugs put back.

# %% alternative: the KL written out, autograd.grad and a manual SGD update, the teacher detached
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    params = list(student.parameters())
    teacher.requires_grad_(False)
    teacher.eval()
    cached = None if (not cache_teacher or augment is not None) else {}
    losses = []
    for _ in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            keys = [int(i) for i in index]
            if cached is not None and all(k in cached for k in keys):
                t = torch.stack([cached[k] for k in keys])
            else:
                t = teacher(x).detach()
                if cached is not None:
                    cached.update(zip(keys, t))
            z = student(x)
            log_p_s = torch.log_softmax(z / temperature, dim=1)
            log_p_t = torch.log_softmax(t / temperature, dim=1)
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
            loss = alpha * F.cross_entropy(z, y) + (1 - alpha) * temperature**2 * kl
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
            losses.append(float(loss))
    return losses


# %% alternative: a tensor cache filled in the first epoch, log_target=True with reduction='sum' / B
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    store = None
    losses = []
    with torch.no_grad():
        teacher.train(False)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            x = x if augment is None else augment(x)
            if cache_teacher and augment is None and epoch > 0:
                teacher_logits = store[index]
            else:
                with torch.inference_mode():
                    teacher_logits = teacher(x).clone()
                if cache_teacher and augment is None:
                    if store is None:
                        store = torch.zeros(len(loader.y), teacher_logits.shape[1])
                    store[index] = teacher_logits
            s = student(x)
            soft = F.kl_div(
                F.log_softmax(s / temperature, 1),
                F.log_softmax(teacher_logits / temperature, 1),
                reduction="sum",
                log_target=True,
            ) / len(x)
            loss = alpha * F.cross_entropy(s, y) + (1 - alpha) * soft * temperature * temperature
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach().item())
    return losses


# %% kdlib: kdlib's Distiller, its steps' losses recorded
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    trainer = Distiller(
        student,
        teacher,
        temperature=temperature,
        alpha=alpha,
        device="cpu",
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
        augment=augment,
        cache_teacher=cache_teacher and augment is None,
        progress=False,
    )
    losses = []
    step = trainer.step

    def logged(batch, *args, **kwargs):
        parts = step(batch, *args, **kwargs)
        losses.append(float(parts["loss"]))
        return parts

    trainer.step = logged
    trainer.fit(loader, epochs)
    return losses


# %% kdlib: the loop fixed, with kdlib's kd_loss for the loss
from kdlib.losses import kd_loss


def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            loss = kd_loss(student_logits, teacher_logits, y, temperature=temperature, alpha=alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: the teacher left in training mode
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: tau^2 missing
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = F.kl_div(
                F.log_softmax(student_logits / temperature, dim=1),
                F.softmax(teacher_logits / temperature, dim=1),
                reduction="batchmean",
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: reduction="mean" instead of "batchmean"
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="mean",
                )
                * temperature**2
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: the KL's arguments swapped
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    F.softmax(student_logits / temperature, dim=1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: the teacher's logits not detached (no torch.no_grad)
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: the cache used with augmentation
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: alpha weights the soft term
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = cache_teacher and augment is None  # a cached view is not this step's view
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = (1 - alpha) * hard + alpha * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses


# %% bug: the cache never used
def distil(
    student,
    teacher,
    loader,
    epochs=1,
    *,
    temperature=4.0,
    alpha=0.5,
    lr=0.1,
    augment=None,
    cache_teacher=False,
):
    optimizer = torch.optim.SGD(student.parameters(), lr=lr)
    use_cache = False
    cache = {}
    losses = []
    teacher.eval()  # dropout off, BatchNorm on its running statistics (and left alone)
    for epoch in range(epochs):
        student.train()
        for x, y, index in loader:
            if augment is not None:
                x = augment(x)
            if use_cache and all(i in cache for i in index.tolist()):
                teacher_logits = torch.stack([cache[i] for i in index.tolist()])
            else:
                with torch.no_grad():  # no graph, no gradient into the teacher
                    teacher_logits = teacher(x)
                if use_cache:
                    for i, z in zip(index.tolist(), teacher_logits):
                        cache[i] = z
            student_logits = student(x)
            hard = F.cross_entropy(student_logits, y)
            # KL(p_T || p_S): the student's log-probabilities first, the teacher's
            # probabilities second; the sum over classes averaged over the batch; times tau^2
            soft = (
                F.kl_div(
                    F.log_softmax(student_logits / temperature, dim=1),
                    F.softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean",
                )
                * temperature**2
            )
            loss = alpha * hard + (1 - alpha) * soft
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses
