# ruff: noqa
# Answer set of 06_relation_based, exercise rkd_distances_answer.

# %% alternative: torch.cdist, the mean over i != j as sum / (N (N - 1))
def normalised_distances(emb):
    d = torch.cdist(emb, emb)
    n = emb.shape[0]
    return d / (d.sum() / (n * (n - 1)))


# %% kdlib: kdlib's pairwise_distances, normalised by hand
def normalised_distances(emb):
    d = pairwise_distances(emb)
    off = ~torch.eye(len(emb), dtype=torch.bool)
    return d / d[off].mean()


# %% kdlib: kdlib's normalisation (normalised_distances)
from kdlib.relations import normalised_distances


# %% bug: the mean includes the zero diagonal
def normalised_distances(emb):
    d = torch.cdist(emb, emb)
    return d / d.mean()


# %% bug: squared distances
def normalised_distances(emb):
    d = torch.cdist(emb, emb) ** 2
    off = ~torch.eye(len(emb), dtype=torch.bool)
    return d / d[off].mean()
