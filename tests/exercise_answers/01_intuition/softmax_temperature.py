# ruff: noqa
# Answer set of 01_intuition, exercise softmax_temperature (see _runner.py for the format).

# %% alternative: torch.softmax of the scaled logits (PyTorch subtracts the max itself)
def softmax_with_temperature(logits, temperature=1.0):
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return torch.softmax(logits / temperature, dim=-1)


# %% alternative: shift by amax, exp, then an L1 normalisation
import torch.nn.functional as F


def softmax_with_temperature(logits, temperature=1.0):
    if not temperature > 0:
        raise ValueError(f"temperature {temperature}")
    z = logits / temperature
    return F.normalize((z - z.amax(dim=-1, keepdim=True)).exp(), p=1, dim=-1)


# %% kdlib: a call to kdlib's function
def softmax_with_temperature(logits, temperature=1.0):
    return losses.softmax_with_temperature(logits, temperature)


# %% kdlib: kdlib's function bound to the answer's name
softmax_with_temperature = losses.softmax_with_temperature


# %% kdlib: kdlib's function kept in a default argument
def softmax_with_temperature(logits, temperature=1.0, _ref=losses.softmax_with_temperature):
    return _ref(logits, temperature)


# %% kdlib: exp of kdlib's log-softmax with temperature
def softmax_with_temperature(logits, temperature=1.0):
    from kdlib.losses import log_softmax_with_temperature as lsm

    return lsm(logits, temperature).exp()


# %% bug: the temperature is ignored
def softmax_with_temperature(logits, temperature=1.0):
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return torch.softmax(logits, dim=-1)


# %% bug: no max subtracted, large logits overflow to nan
def softmax_with_temperature(logits, temperature=1.0):
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    e = torch.exp(logits / temperature)
    return e / e.sum(dim=-1, keepdim=True)


# %% bug: a zero temperature is not refused
def softmax_with_temperature(logits, temperature=1.0):
    return torch.softmax(logits / max(temperature, 1e-12), dim=-1)
