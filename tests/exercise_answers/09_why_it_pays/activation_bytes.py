# ruff: noqa
# Answer set of 09_why_it_pays, exercise activation_bytes.

# %% alternative: hooks registered on the leaves found with model.modules(), a list as counter
def activation_bytes(model, x):
    sizes = []
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out: sizes.append(out.nelement() * out.element_size())
        )
        for m in model.modules()
        if len(list(m.children())) == 0
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(sum(sizes))


# %% kdlib: kdlib's activation_memory
def activation_bytes(model, x):
    return activation_memory(model, tuple(x.shape[1:]), batch_size=x.shape[0]).total


# %% bug: the hooks stay when the forward pass fails
def activation_bytes(model, x):
    total = []
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out: total.append(out.numel() * out.element_size())
        )
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return sum(total)


# %% bug: every module counted, containers included
def activation_bytes(model, x):
    total = []
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out: total.append(out.numel() * out.element_size())
        )
        for m in model.modules()
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sum(total)
