"""kdlib.exercises.blocked: what it blocks, what it gives the test, and that it puts it all back."""

import functools

import pytest
import torch

import kdlib.distill
import kdlib.losses
from kdlib.exercises import BlockedError, blocked
from kdlib.losses import kd_loss

S = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
T = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 0])


def test_every_route_to_a_blocked_function_raises_and_names_it():
    partial = functools.partial(kd_loss, alpha=0.5)
    nested = functools.partial(partial, temperature=2.0)
    bound = {"f": kd_loss}

    def default_argument(s, t, y, _f=kdlib.losses.kd_loss):
        return _f(s, t, y)

    namespace = {"kd_loss": kd_loss, "alias": kd_loss, "p": partial, "q": nested}
    routes = [
        lambda: namespace["alias"](S, T, Y),
        lambda: namespace["p"](S, T, Y),
        lambda: namespace["q"](S, T, Y),
        lambda: kdlib.losses.kd_loss(S, T, Y),
        lambda: kdlib.distill.kd_loss(S, T, Y),  # the same function, imported into kdlib.distill
        lambda: default_argument(S, T, Y),  # invisible to a scan of names: code swapped
        lambda: bound["f"](S, T, Y),
        lambda: partial(S, T, Y),  # the original partial object
    ]
    with pytest.raises(BlockedError):  # the answer caught the errors and went on: still caught
        with blocked("kdlib.losses.kd_loss", namespace=namespace):
            for route in routes:
                with pytest.raises(BlockedError, match="kdlib.losses.kd_loss.*write it yourself"):
                    route()


def test_everything_is_restored_even_after_an_error():
    want = kd_loss(S, T, Y)
    namespace = {"kd_loss": kd_loss}
    code = kd_loss.__code__
    with pytest.raises(BlockedError):
        with blocked("kdlib.losses.kd_loss", "kdlib.distill.Distiller", namespace=namespace):
            namespace["kd_loss"](S, T, Y)
    assert namespace["kd_loss"] is kd_loss and kdlib.losses.kd_loss is kd_loss
    assert kdlib.distill.kd_loss is kd_loss and kd_loss.__code__ is code
    assert isinstance(kdlib.distill.Distiller, type)
    assert kdlib.distill.Distiller.__name__ == "Distiller"
    assert torch.equal(kd_loss(S, T, Y), want)


def test_the_test_reaches_the_originals():
    want = kd_loss(S, T, Y, temperature=2.0)
    with blocked(
        "kdlib.losses.kd_loss", "kdlib.losses.soft_loss", "kdlib.distill.Distiller", namespace={}
    ) as ref:
        # kd_loss calls soft_loss, which is blocked too: the reference still works
        assert torch.equal(ref.kd_loss(S, T, Y, temperature=2.0), want)
        assert torch.equal(ref["kdlib.losses.kd_loss"](S, T, Y, temperature=2.0), want)
        assert ref.Distiller is not kdlib.distill.Distiller
        assert ref.run(kdlib.losses.soft_loss, S, T) is not None
        with ref.unblocked():
            kdlib.losses.kd_loss(S, T, Y)
        with pytest.raises(AttributeError, match="not blocked here"):
            _ = ref.hard_loss
        assert ref.calls == {n: 0 for n in ref.names}


def test_a_blocked_class_refuses_instances_but_answers_isinstance():
    model = torch.nn.Linear(3, 3)
    namespace = {"D": kdlib.distill.Distiller}
    # the refused call below is caught inside the block, so the block raises on exit
    with pytest.raises(BlockedError, match="went on after the error"):
        with blocked("kdlib.distill.Distiller", namespace=namespace) as ref:
            with pytest.raises(BlockedError, match="kdlib.distill.Distiller"):
                namespace["D"](model, None, device="cpu")
            trainer = ref.Distiller(model, None, device="cpu", progress=False)
            assert isinstance(trainer, kdlib.distill.Distiller)
            assert not isinstance(object(), namespace["D"])


def test_a_caller_whose_own_code_does_not_use_kdlib_passes():
    def mine(s):
        return torch.softmax(s, dim=1)

    want = kdlib.losses.softmax_with_temperature(S)
    with blocked("kdlib.losses.softmax_with_temperature", namespace={"mine": mine}) as ref:
        assert torch.allclose(mine(S), want)
    assert ref.calls == {"kdlib.losses.softmax_with_temperature": 0}


def test_bad_names_are_refused():
    for bad in ("kd_loss", "kdlib.losses.nope", "kdlib.nope.kd_loss", "kdlib.losses.IGNORE_INDEX"):
        with pytest.raises(ValueError, match="name"):
            with blocked(bad, namespace={}):
                pass
    with pytest.raises(ValueError, match="names"):
        with blocked(namespace={}):
            pass


def test_the_notebooks_block_only_public_functions():
    """A graded test blocks kdlib's public implementation of what the exercise asks; a private
    helper or fast copy in a blocked list is a hole waiting to open (the next copy is missed)."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    names = set()
    for path in sorted((root / "solutions").glob("*/*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            for call in re.findall(r"blocked\((.*?)namespace", source, re.S):
                names |= set(re.findall(r"['\"](kdlib\.[\w.]+)['\"]", call))
    assert len(names) > 20, names  # the lists were found
    private = {n for n in names if any(part.startswith("_") for part in n.split("."))}
    assert not private, sorted(private)
    for name in names:  # and each still exists
        module, _, attr = name.rpartition(".")
        assert hasattr(__import__(module, fromlist=[attr]), attr), name
