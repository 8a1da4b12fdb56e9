# ruff: noqa
# Answer set of 06_relation_based, exercise sp_answer (sp_gram and sp_loss).

# %% alternative: F.normalize of the Gram matrix, MSE summed
def sp_gram(feature):
    q = feature.reshape(feature.shape[0], -1)
    return F.normalize(q @ q.t(), p=2, dim=1)


def sp_loss(student_feature, teacher_feature):
    n = student_feature.shape[0]
    return F.mse_loss(sp_gram(student_feature), sp_gram(teacher_feature), reduction="sum") / n**2


# %% kdlib: kdlib's similarity_matrix and similarity_preserving_loss
def sp_gram(feature):
    return similarity_matrix(feature)


def sp_loss(student_feature, teacher_feature):
    return similarity_preserving_loss(student_feature, teacher_feature)


# %% bug: the columns normalised instead of the rows
def sp_gram(feature):
    q = feature.flatten(1)
    return F.normalize(q @ q.T, dim=0)


def sp_loss(student_feature, teacher_feature):
    n = student_feature.shape[0]
    return (sp_gram(student_feature) - sp_gram(teacher_feature)).pow(2).sum() / n**2


# %% bug: divided by N instead of N^2
def sp_gram(feature):
    q = feature.flatten(1)
    return F.normalize(q @ q.T, dim=1)


def sp_loss(student_feature, teacher_feature):
    n = student_feature.shape[0]
    return (sp_gram(student_feature) - sp_gram(teacher_feature)).pow(2).sum() / n
