"""The guard of the locked cells: runs inside a student's kernel, beside the student's code.

The grader (:class:`kdlib.course.sandbox.GuardedExecute`) never imports this module in the
kernel: before the notebook's first cell it sends the module's source (:data:`SOURCE`), which
the kernel executes in a private namespace, and keeps only the object :func:`make_guard`
returns, under a random name. The grader then calls its two methods through
``user_expressions`` (evaluated without the input transformers a student cell may install):

- ``restore()`` before every locked cell: puts back what the cells run since the last locked
  cell changed among the functions of ``builtins``, ``math``, ``operator``, ``functools``,
  ``torch``, ``numpy`` and ``kdlib`` (those the notebook mentions, imported here first), the
  methods of ``torch.Tensor``, ``torch.nn.Module``, ``object`` and of the IPython shell, its
  input and AST transformers, event callbacks and exception handler, a trace or profile
  function, ``__builtins__``, and the names earlier locked cells bound to a function, class or
  module. Returns what it put back (the grader reports it as ``tests-tampered``).
- ``record(hidden)`` after every locked cell: remembers the names it bound; when ``hidden``
  (the hidden-tests marker) is in its source, removes that source from the kernel's history.

What the libraries do by themselves is not the student's doing and is neither put back nor
reported: a function replaced by a wrapper of itself defined inside the same package
(``import torch._dynamo``, which the first optimiser step triggers, wraps
``torch.manual_seed``), and event callbacks that IPython, ipykernel or matplotlib register
(matplotlib's inline backend, loaded by the first figure, registers ``post_execute``). Both are
adopted: later restores keep them.

Only the standard library is used, and only inside :func:`make_guard`'s closure; the module
imports nothing at load time beyond what the kernel already has.
"""

import builtins
import importlib
import linecache
import os
import sys
import types

# modules whose event callbacks are the kernel's own (the first part of __module__)
TRUSTED_CALLBACKS = ("IPython", "ipykernel", "matplotlib", "matplotlib_inline")
# names IPython and ipykernel themselves swap in builtins around every execution
SWAPPED_BUILTINS = {"input", "raw_input", "get_ipython", "exit", "quit", "display", "help"}
SIMPLE = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.ModuleType,
    type,
    types.MethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)


def _interesting(value) -> bool:
    return isinstance(value, SIMPLE) or callable(value)


def _code_of(value):
    if not isinstance(value, types.FunctionType):
        return None
    return value.__code__, value.__defaults__, value.__kwdefaults__


def _package_dir(module_name: str) -> str | None:
    """The folder of the top-level package of ``module_name`` (with a trailing separator)."""
    top = sys.modules.get(module_name.split(".")[0])
    path = getattr(top, "__file__", None)
    if not path:
        return None
    return os.path.dirname(path) + os.sep


def _defined_in(value, folder: str | None) -> bool:
    """Whether ``value``'s code lives in a file under ``folder`` (a library's own function;
    a student's cell compiles to a file of its own, never inside an installed package)."""
    code = getattr(value, "__code__", None)
    return bool(folder and code is not None and code.co_filename.startswith(folder))


def own_wrapper(new, old, module_name: str) -> bool:
    """``new`` wraps ``old`` (``new.__wrapped__ is old``) and is defined inside the package of
    ``module_name``: the library decorated its own function."""
    return getattr(new, "__wrapped__", None) is old and _defined_in(new, _package_dir(module_name))


def library_addition(value) -> bool:
    """A new method that a library put on a watched class (transformers adds
    ``torch.nn.Module.smart_apply`` when it builds a model): its code lives in the package of
    the module it names, never in a student's cell. Only *new* attributes are adopted this way;
    a replaced one is put back unless :func:`own_wrapper` says the library wrapped its own."""
    function = getattr(value, "__func__", value)
    module = getattr(function, "__module__", None) or ""
    return module not in ("", "__main__") and _defined_in(function, _package_dir(module))


def trusted_callback(callback) -> bool:
    """An event callback registered by IPython, ipykernel or matplotlib (its code inside their
    package), not by a student cell."""
    function = getattr(callback, "__func__", callback)
    module = (getattr(function, "__module__", None) or "").split(".")[0]
    return module in TRUSTED_CALLBACKS and _defined_in(function, _package_dir(module))


def make_guard(ip, wanted):
    """Snapshot the kernel ``ip`` (an IPython shell) after importing the modules ``wanted``;
    return an object with ``restore()`` and ``record(hidden)`` (see the module docstring)."""
    for name in wanted:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S110 - a module the notebook will fail to import
            pass
    watched = ["builtins", "math", "operator", "functools"]
    watched += sorted(
        m
        for m in list(sys.modules)
        if m in wanted or any(m.startswith(w + ".") for w in wanted if w == "kdlib")
    )
    watched += [
        m for m in ("torch.nn.functional", "torch.testing", "numpy.testing") if m in sys.modules
    ]
    watched = list(dict.fromkeys(m for m in watched if m in sys.modules))
    modules = {m: sys.modules[m] for m in watched}
    snap = {
        m: {
            k: (v, _code_of(v))
            for k, v in list(vars(mod).items())
            if _interesting(v) and not (m == "builtins" and k in SWAPPED_BUILTINS)
        }
        for m, mod in modules.items()
    }
    classes = []
    for mod, cls in (("torch", "Tensor"), ("torch.nn", "Module"), ("builtins", "object")):
        c = getattr(sys.modules.get(mod), cls, None)
        if isinstance(c, type):
            classes.append((c, dict(vars(c))))
    shell_classes = [(c, dict(vars(c))) for c in type(ip).__mro__ if c is not object]
    shell_dict = dict(vars(ip))
    itm = ip.input_transformer_manager
    state = {
        "itm": itm,
        "cleanup": list(itm.cleanup_transforms),
        "line": list(itm.line_transforms),
        "token": list(itm.token_transformers),
        "post": list(ip.input_transformers_post),
        "ast": list(ip.ast_transformers),
        "events": {k: list(v) for k, v in ip.events.callbacks.items()},
        "custom": (ip.custom_exceptions, ip.CustomTB),
    }
    locked = {}
    before = {}
    missing = object()

    def restore_modules(done):
        for m, mod in modules.items():
            if sys.modules.get(m) is not mod:
                sys.modules[m] = mod
                done.append(f"sys.modules[{m!r}]")
            d = vars(mod)
            for k, (v, code) in snap[m].items():
                cur = d.get(k, missing)
                if cur is not v and own_wrapper(cur, v, m):
                    snap[m][k] = (cur, _code_of(cur))  # the library's own decoration: adopted
                elif cur is not v:
                    d[k] = v
                    done.append(f"{m}.{k}")
                elif code is not None and _code_of(v) != code:
                    v.__code__, v.__defaults__, v.__kwdefaults__ = code
                    done.append(f"{m}.{k}.__code__")

    def restore_classes(done):
        for c, saved in classes + shell_classes:
            now = vars(c)
            for k in [k for k in now if k not in saved and callable(now[k])]:
                if library_addition(now[k]):  # e.g. transformers' nn.Module.smart_apply
                    saved[k] = now[k]
                    continue
                try:
                    delattr(c, k)
                    done.append(f"{c.__name__}.{k}")
                except (TypeError, AttributeError):
                    pass
            for k, v in saved.items():
                cur = now.get(k, missing)
                if cur is v or not (
                    callable(v) or isinstance(v, (staticmethod, classmethod, property))
                ):
                    continue
                if own_wrapper(cur, v, c.__module__):
                    saved[k] = cur
                    continue
                try:
                    setattr(c, k, v)
                    done.append(f"{c.__name__}.{k}")
                except (TypeError, AttributeError):
                    pass
        d = vars(ip)
        for k in list(d):  # instance attributes hiding the shell's methods
            if k != "CustomTB" and callable(getattr(type(ip), k, None)) and callable(d[k]):
                if k in shell_dict:
                    if d[k] is not shell_dict[k]:
                        d[k] = shell_dict[k]
                        done.append(f"shell.{k}")
                else:
                    del d[k]
                    done.append(f"shell.{k}")

    def restore_shell(done):
        if ip.input_transformer_manager is not state["itm"]:
            ip.input_transformer_manager = state["itm"]
            done.append("input_transformer_manager")
        for attr, key in (
            ("cleanup_transforms", "cleanup"),
            ("line_transforms", "line"),
            ("token_transformers", "token"),
        ):
            if list(getattr(itm, attr)) != state[key]:
                setattr(itm, attr, list(state[key]))
                done.append(f"input transformers ({attr})")
        if list(ip.input_transformers_post) != state["post"]:
            ip.input_transformers_post = list(state["post"])
            done.append("input_transformers_post")
        if list(ip.ast_transformers) != state["ast"]:
            ip.ast_transformers = list(state["ast"])
            done.append("ast_transformers")
        for k in set(state["events"]) | set(ip.events.callbacks):
            now = list(ip.events.callbacks.get(k, []))
            saved = state["events"].get(k, [])
            if now == saved:
                continue
            added = [cb for cb in now if cb not in saved]
            if all(cb in now for cb in saved) and all(trusted_callback(cb) for cb in added):
                state["events"][k] = now  # the kernel's own (matplotlib's inline backend)
                continue
            ip.events.callbacks[k] = list(saved)
            done.append(f"events.{k}")
        if (ip.custom_exceptions, ip.CustomTB) != state["custom"]:
            ip.custom_exceptions, ip.CustomTB = state["custom"]
            done.append("custom exception handler")
        if sys.gettrace() is not None or sys.getprofile() is not None:
            sys.settrace(None)
            sys.setprofile(None)
            done.append("sys.settrace/setprofile")

    def restore():
        done = []
        restore_modules(done)
        restore_classes(done)
        restore_shell(done)
        ns = ip.user_ns
        if ns.get("__builtins__") is not builtins:
            ns["__builtins__"] = builtins
            done.append("__builtins__")
        for k, v in locked.items():
            if ns.get(k, missing) is not v:
                ns[k] = v
                done.append(f"{k} (bound by a locked cell)")
        before.clear()
        before.update({k: id(v) for k, v in ns.items()})
        return done

    def record(hidden):
        ns = ip.user_ns
        for k, v in list(ns.items()):
            if k.startswith("_") or id(v) == before.get(k):
                continue
            if isinstance(
                v, (types.FunctionType, types.BuiltinFunctionType, types.ModuleType, type)
            ):
                locked[k] = v
        if hidden:  # the locked cell's source leaves the kernel's history
            hm = ip.history_manager
            for hist in (hm.input_hist_parsed, hm.input_hist_raw):
                for i, text in enumerate(hist):
                    if hidden in text:
                        hist[i] = ""
            for k in [
                k
                for k, v in ns.items()
                if k.startswith("_i") and isinstance(v, str) and hidden in v
            ]:
                ns[k] = ""
            for k, entry in list(linecache.cache.items()):
                if len(entry) > 2 and any(hidden in line for line in entry[2] or ()):
                    del linecache.cache[k]
            sys.last_type = sys.last_value = sys.last_traceback = None
            if hasattr(sys, "last_exc"):
                sys.last_exc = None
        return []

    return types.SimpleNamespace(restore=restore, record=record)


def setup_code(variable: str, wanted: list[str]) -> str:
    """The code the grader runs in the kernel before the first cell: this module's source
    executed in a private namespace, the guard bound to ``variable``, nothing else left."""
    return (
        f"def __kdlib_guard_setup(source, wanted):\n"
        f"    ns = {{'__name__': 'kdlib_guard'}}\n"
        f"    exec(compile(source, '<kdlib guard>', 'exec'), ns)\n"
        f"    return ns['make_guard'](get_ipython(), wanted)\n"
        f"{variable} = __kdlib_guard_setup({SOURCE!r}, {list(wanted)!r})\n"
        f"del __kdlib_guard_setup\n"
    )


def _own_source() -> str:
    with open(__file__, encoding="utf-8") as fh:
        return fh.read()


SOURCE = _own_source() if __name__ != "kdlib_guard" else ""
