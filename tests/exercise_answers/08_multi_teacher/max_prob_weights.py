# ruff: noqa
# Answer set of 08_multi_teacher, exercise max_prob_weights.

# %% alternative: amax of a stacked softmax, normalised with a division by the column sums
def max_prob_weights(teacher_logits):
    top = torch.stack(teacher_logits).softmax(dim=-1).amax(dim=-1)
    return top / top.sum(0)


# %% kdlib: kdlib's confidence_weights
def max_prob_weights(teacher_logits):
    return confidence_weights(teacher_logits, "max_prob")


# %% kdlib: kdlib's teacher_weights in confidence mode
from kdlib.multi_teacher import teacher_weights


def max_prob_weights(teacher_logits):
    return teacher_weights(teacher_logits, "confidence", "max_prob")


# %% bug: normalised over the samples instead of the teachers
def max_prob_weights(teacher_logits):
    top = torch.stack([torch.softmax(z, dim=1).max(dim=1).values for z in teacher_logits])
    return top / top.sum(dim=1, keepdim=True)


# %% bug: the largest logit instead of the largest probability
def max_prob_weights(teacher_logits):
    top = torch.stack([z.max(dim=1).values for z in teacher_logits])
    return top / top.sum(dim=0, keepdim=True)
