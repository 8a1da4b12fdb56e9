# ruff: noqa
# Answer set of 07_self_and_online, exercise dml_loss (soft_loss and hard_loss stay available).

# %% alternative: F.kl_div and F.cross_entropy, peers summed then divided
import torch.nn.functional as F


def dml_loss(logits_list, labels, i, temperature=1.0, alpha=0.5):
    z = logits_list[i]
    log_q = F.log_softmax(z / temperature, dim=1)
    total = 0.0
    for j, peer in enumerate(logits_list):
        if j != i:
            log_p = F.log_softmax(peer.detach() / temperature, dim=1)
            total = total + F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    soft = temperature**2 * total / (len(logits_list) - 1)
    return alpha * F.cross_entropy(z, labels) + (1 - alpha) * soft


# %% kdlib: kdlib's dml_losses, participant i
def dml_loss(logits_list, labels, i, temperature=1.0, alpha=0.5):
    return dml_losses(logits_list, labels, temperature=temperature, alpha=alpha)[i]


# %% bug: the peers are not detached
def dml_loss(logits_list, labels, i, temperature=1.0, alpha=0.5):
    z_i = logits_list[i]
    # (kdlib's soft_loss detaches its teacher argument, so the KL is written out here)
    log_q = torch.log_softmax(z_i / temperature, dim=1)
    kls = [
        (torch.softmax(z_j / temperature, 1) * (torch.log_softmax(z_j / temperature, 1) - log_q))
        .sum(1)
        .mean()
        for j, z_j in enumerate(logits_list)
        if j != i
    ]
    return alpha * hard_loss(z_i, labels) + (1 - alpha) * temperature**2 * torch.stack(kls).mean()


# %% bug: the peers summed, not averaged
def dml_loss(logits_list, labels, i, temperature=1.0, alpha=0.5):
    z_i = logits_list[i]
    peers = [
        soft_loss(z_i, z_j.detach(), temperature) for j, z_j in enumerate(logits_list) if j != i
    ]
    return alpha * hard_loss(z_i, labels) + (1 - alpha) * torch.stack(peers).sum()


# %% bug: KL the wrong way round, KL(p_i || p_j)
def dml_loss(logits_list, labels, i, temperature=1.0, alpha=0.5):
    z_i = logits_list[i]
    peers = [
        soft_loss(z_j.detach(), z_i, temperature) for j, z_j in enumerate(logits_list) if j != i
    ]
    return alpha * hard_loss(z_i, labels) + (1 - alpha) * torch.stack(peers).mean()
