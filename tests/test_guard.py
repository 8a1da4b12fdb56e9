"""The kernel guard (kdlib/course/guard.py) on a real IPython shell, in this process: what a
student cell changes is put back and reported; what the libraries do by themselves is not.

The end-to-end cases (a hostile class graded in bubblewrap) are in test_grading_hostile.py.
"""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("IPython")
torch = pytest.importorskip("torch")

from kdlib.course import guard  # noqa: E402


@pytest.fixture
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    saved_seed, saved_allclose = torch.manual_seed, torch.allclose
    saved_events = {k: list(v) for k, v in ip.events.callbacks.items()}
    yield ip
    torch.manual_seed, torch.allclose = saved_seed, saved_allclose
    for k, v in saved_events.items():
        ip.events.callbacks[k] = v


def test_a_patched_library_function_is_put_back_and_reported(shell):
    g = guard.make_guard(shell, ["torch"])
    original = torch.allclose
    shell.run_cell("import torch\ntorch.allclose = lambda *a, **k: True")
    assert torch.allclose is not original
    assert "torch.allclose" in g.restore()
    assert torch.allclose is original
    assert g.restore() == []  # nothing left to put back


def test_a_wrapper_made_in_a_cell_is_not_the_librarys_own(shell):
    g = guard.make_guard(shell, ["torch"])
    shell.run_cell(
        "import functools, torch\n"
        "torch.manual_seed = functools.wraps(torch.manual_seed)(lambda s: None)"
    )
    assert "torch.manual_seed" in g.restore()


def test_the_librarys_own_wrapper_is_adopted_silently(shell):
    """torch._dynamo, imported by the first optimiser step, wraps torch.manual_seed with
    torch._disable_dynamo: the course's own code, neither put back nor reported."""
    g = guard.make_guard(shell, ["torch"])
    original = torch.manual_seed
    torch.manual_seed = torch._disable_dynamo(original)
    wrapped = torch.manual_seed
    assert guard.own_wrapper(wrapped, original, "torch")
    assert g.restore() == []
    assert torch.manual_seed is wrapped  # kept, and kept by later restores too
    assert g.restore() == []


def test_a_method_a_library_adds_to_module_is_adopted_and_a_cells_is_removed(shell):
    """transformers adds torch.nn.Module.smart_apply when it builds a model: the library's
    own code, kept; a method a cell adds to nn.Module is removed and reported."""
    import json

    g = guard.make_guard(shell, ["torch"])
    try:
        torch.nn.Module.library_method = json.dumps  # code inside a package: a library's
        assert g.restore() == []
        assert torch.nn.Module.library_method is json.dumps
        shell.run_cell("import torch\ntorch.nn.Module.cell_method = lambda self: 0")
        assert "Module.cell_method" in g.restore()
        assert not hasattr(torch.nn.Module, "cell_method")
    finally:
        for name in ("library_method", "cell_method"):
            if name in vars(torch.nn.Module):
                delattr(torch.nn.Module, name)


def test_event_callbacks_of_the_kernel_are_kept_and_a_cells_are_removed(shell):
    pytest.importorskip("matplotlib_inline")
    from matplotlib_inline.backend_inline import flush_figures

    g = guard.make_guard(shell, [])
    shell.events.register("post_execute", flush_figures)
    assert g.restore() == []
    assert flush_figures in shell.events.callbacks["post_execute"]

    def sneaky():
        pass

    shell.events.register("pre_run_cell", functools.partial(sneaky))
    assert "events.pre_run_cell" in g.restore()
    assert not any(
        isinstance(cb, functools.partial) for cb in shell.events.callbacks["pre_run_cell"]
    )


def test_names_bound_by_a_locked_cell_are_rebound(shell):
    g = guard.make_guard(shell, ["torch"])
    g.restore()
    shell.run_cell("from torch import allclose as check")
    g.record("")
    shell.run_cell("check = lambda *a, **k: True")
    done = g.restore()
    assert "check (bound by a locked cell)" in done
    assert shell.user_ns["check"] is torch.allclose


def test_setup_code_leaves_only_the_guard_in_the_namespace(shell):
    before = set(shell.user_ns)
    result = shell.run_cell(guard.setup_code("_g_test", ["math"]))
    assert result.success, result.error_in_exec
    assert set(shell.user_ns) - before <= {"_g_test", "_", "__", "___"} | {
        k for k in shell.user_ns if k.startswith("_i") or k.startswith("_o")
    }
    assert shell.user_ns["_g_test"].restore() == []
    del shell.user_ns["_g_test"]
