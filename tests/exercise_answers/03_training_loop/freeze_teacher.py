# ruff: noqa
# Answer set of 03_training_loop, exercise freeze_teacher.

# %% alternative: requires_grad_ on the whole model, train bound with types.MethodType
import types


def _no_train(self, mode=True):
    return self


def freeze_teacher(model):
    model.requires_grad_(False)
    model.eval()
    for module in model.modules():
        module.train = types.MethodType(_no_train, module)
    return model


# %% alternative: a per-module closure
def freeze_teacher(model):
    for m in model.modules():
        m.training = False
        for p in m.parameters(recurse=False):
            p.requires_grad = False
        m.train = (lambda module: lambda mode=True: module)(m)
    return model


# %% kdlib: a call to kdlib's freeze
def freeze_teacher(model):
    return freeze(model)


# %% kdlib: kdlib's freeze under another name
freeze_teacher = freeze

# %% kdlib: kdlib's own no-op train, bound by hand
import types
import kdlib.distill


def freeze_teacher(model):
    model.eval().requires_grad_(False)
    for m in model.modules():
        m.train = types.MethodType(kdlib.distill.stay_in_eval, m)
    return model


# %% bug: eval and requires_grad only, a parent's .train() unfreezes it
def freeze_teacher(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# %% bug: gradients still on
def freeze_teacher(model):
    model.eval()
    for m in model.modules():
        m.train = lambda mode=True, _m=m: _m
    return model
