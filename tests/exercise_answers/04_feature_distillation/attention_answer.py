# ruff: noqa
# Answer set of 04_feature_distillation, exercise attention_answer.

# %% alternative: a sum over channels (the normalisation removes the 1/C)
def my_attention_map(feature, p=2):
    a = (feature.abs() ** p).sum(dim=1).reshape(feature.shape[0], -1)
    return a / a.norm(dim=1, keepdim=True)


# %% kdlib: a call to kdlib's attention_map
def my_attention_map(feature, p=2):
    return attention_map(feature, p)


# %% kdlib: a functools.partial of kdlib's attention_map
import functools

_am = functools.partial(attention_map)


def my_attention_map(feature, p=2):
    return _am(feature, p=p)


# %% bug: no absolute value (odd p goes wrong)
def my_attention_map(feature, p=2):
    return F.normalize(feature.pow(p).mean(dim=1).flatten(1), dim=1)


# %% bug: not normalised
def my_attention_map(feature, p=2):
    return feature.abs().pow(p).mean(dim=1).flatten(1)


# %% bug: L1 normalisation
def my_attention_map(feature, p=2):
    return F.normalize(feature.abs().pow(p).mean(dim=1).flatten(1), p=1, dim=1)
