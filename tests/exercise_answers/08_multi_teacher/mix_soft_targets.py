# ruff: noqa
# Answer set of 08_multi_teacher, exercise mix_soft_targets.

# %% alternative: a running sum over the teachers
def mix_soft_targets(teacher_logits, temperature, weights=None):
    k = len(teacher_logits)
    weights = [1.0 / k] * k if weights is None else list(weights)
    total = sum(weights)
    mixed = 0
    for w, z in zip(weights, teacher_logits):
        mixed = mixed + (w / total) * torch.softmax(z / temperature, dim=1)
    return mixed


# %% kdlib: kdlib's ensemble_soft_targets
def mix_soft_targets(teacher_logits, temperature, weights=None):
    return ensemble_soft_targets(teacher_logits, temperature, weights)


# %% kdlib: softmax of kdlib's combined logits
def mix_soft_targets(teacher_logits, temperature, weights=None):
    return torch.softmax(combine_logits(teacher_logits, temperature, weights) / temperature, dim=1)


# %% bug: the weights are not normalised
def mix_soft_targets(teacher_logits, temperature, weights=None):
    k = len(teacher_logits)
    w = (
        torch.full((k,), 1.0 / k)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float32)
    )
    probs = torch.stack([torch.softmax(z / temperature, dim=1) for z in teacher_logits])
    return (w[:, None, None] * probs).sum(0)


# %% bug: the temperature is ignored
def mix_soft_targets(teacher_logits, temperature, weights=None):
    k = len(teacher_logits)
    w = torch.ones(k) if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    probs = torch.stack([torch.softmax(z, dim=1) for z in teacher_logits])
    return (w[:, None, None] * probs).sum(0)
