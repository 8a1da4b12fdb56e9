# ruff: noqa
# Answer set of 10_language_models, exercise teacher_sentences.

# %% alternative: one row at a time, Python lists
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    teacher.eval()
    rows, masks = [], []
    with torch.no_grad():
        for _ in range(n):
            row, keep, done = [bos], [], False
            for _ in range(length - 1):
                if done:
                    row.append(pad)
                    keep.append(False)
                    continue
                logits = teacher(torch.tensor([row]))[0, -1]
                token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
                row.append(token)
                keep.append(True)
                done = token == eos
            rows.append(row)
            masks.append(keep)
    return torch.tensor(rows, dtype=torch.long), torch.tensor(masks, dtype=torch.bool)


# %% alternative: a preallocated tensor, the mask built while sampling
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    teacher.eval()
    tokens = torch.full((n, length), pad, dtype=torch.long)
    tokens[:, 0] = bos
    mask = torch.zeros(n, length - 1, dtype=torch.bool)
    alive = torch.ones(n, dtype=torch.bool)
    with torch.no_grad():
        for t in range(1, length):
            probs = F.softmax(teacher(tokens[:, :t])[:, -1], dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            tokens[:, t] = torch.where(alive, nxt, torch.full_like(nxt, pad))
            mask[:, t - 1] = alive
            alive = alive & (nxt != eos)
    return tokens, mask


# %% kdlib: kdlib's sequence_kd_dataset
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    prompts = torch.full((n, 1), bos, dtype=torch.long)
    return sequence_kd_dataset(teacher, prompts, length - 1, eos, pad, generator=generator)


# %% bug: the most likely token instead of a sample
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    tokens = torch.full((n, 1), bos, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(length - 1):
            nxt = teacher(tokens)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            done |= nxt == eos
            tokens = torch.cat([tokens, nxt[:, None]], 1)
    e = (tokens[:, 1:] == eos).long()
    return tokens, (e.cumsum(1) - e) == 0


# %% bug: no padding after eos
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    tokens = torch.full((n, 1), bos, dtype=torch.long)
    with torch.no_grad():
        for _ in range(length - 1):
            probs = torch.softmax(teacher(tokens)[:, -1], -1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            tokens = torch.cat([tokens, nxt], 1)
    e = (tokens[:, 1:] == eos).long()
    return tokens, (e.cumsum(1) - e) == 0


# %% bug: the logits of the first position instead of the last
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    tokens = torch.full((n, 1), bos, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(length - 1):
            probs = torch.softmax(teacher(tokens)[:, 0], -1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            done |= nxt == eos
            tokens = torch.cat([tokens, nxt[:, None]], 1)
    e = (tokens[:, 1:] == eos).long()
    return tokens, (e.cumsum(1) - e) == 0


# %% bug: the mask leaves out the eos itself
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    tokens = torch.full((n, 1), bos, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    with torch.no_grad():
        for _ in range(length - 1):
            probs = torch.softmax(teacher(tokens)[:, -1], -1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            done |= nxt == eos
            tokens = torch.cat([tokens, nxt[:, None]], 1)
    return tokens, (tokens[:, 1:] == eos).long().cumsum(1) == 0


# %% bug: the teacher left in train mode (its dropout samples from another model)
def teacher_sentences(teacher, n, length, bos, eos, pad, generator=None):
    tokens = torch.full((n, length), pad, dtype=torch.long)
    tokens[:, 0] = bos
    mask = torch.zeros(n, length - 1, dtype=torch.bool)
    alive = torch.ones(n, dtype=torch.bool)
    with torch.no_grad():
        for t in range(1, length):
            probs = F.softmax(teacher(tokens[:, :t])[:, -1], dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            tokens[:, t] = torch.where(alive, nxt, torch.full_like(nxt, pad))
            mask[:, t - 1] = alive
            alive = alive & (nxt != eos)
    return tokens, mask
