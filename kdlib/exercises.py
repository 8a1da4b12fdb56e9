"""Graded exercises: keep kdlib's own implementation out of an answer's reach while it is tested.

Most exercises of the course ask the student to write something kdlib already has (softmax with
temperature, ``kd_loss``, ``freeze``, a hint loss, ...). A graded test cell wraps its checks in
:func:`blocked`, so that an answer which only calls kdlib's version fails with a message that
says what happened, while an answer written by the student is checked as before::

    from kdlib.exercises import blocked

    with blocked("kdlib.losses.kd_loss", namespace=globals()) as kdlib_ref:
        got = kd_loss_parts(s, t, y, 4.0, 0.7)                       # the student's code
        want = kdlib_ref.kd_loss(s, t, y, temperature=4.0, alpha=0.7)  # kdlib's, for reference

While the ``with`` block runs, each named object (a function or a class of kdlib) is unusable by
every route an answer could take to it:

- every attribute of every imported ``kdlib`` module bound to it (``kdlib.distill`` imports
  ``kd_loss`` from ``kdlib.losses``: both names are replaced), and every name of ``namespace``
  (the notebook's globals) bound to it, is replaced by a *stand-in* that raises
  :class:`BlockedError` when called; so is a ``functools.partial`` of it;
- a blocked *function* also has its code swapped for the stand-in's, so that references the
  scan above cannot see (a default argument, a closure, a list, a ``partial`` made earlier, a
  bound method of the function) raise too. A class is blocked by its names only.

Everything is put back when the block ends, whether it ends normally or with an error. If the
answer caught the :class:`BlockedError` and carried on, the block raises it on exit, so that a
``try: kdlib...; except: ...`` fallback does not pass either.

The test itself reaches kdlib's implementations through the object the ``with`` statement
returns: ``kdlib_ref.kd_loss`` (by its last name) or ``kdlib_ref["kdlib.losses.kd_loss"]``. A
function called through it runs as if nothing were blocked (including the blocked functions it
calls itself); ``with kdlib_ref.unblocked():`` does the same for a whole block (to call the
methods of a blocked class's instance, say).

This keeps an honest answer honest; it is not a sandbox against a student who sets out to get
round it (one could copy kdlib's source into the answer, after all): the autograder's own
isolation is :mod:`kdlib.course.grade`'s business.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
from collections.abc import Iterator, MutableMapping

__all__ = ["BlockedError", "Blocked", "blocked"]

MESSAGE = (
    "{name} is blocked while this graded test runs: this exercise asks you to write it yourself. "
    "Your answer called kdlib's implementation ({how}); write the computation in your own code "
    "(PyTorch functions are fine)."
)


class BlockedError(Exception):
    """Raised when an answer calls a kdlib implementation that its exercise blocks.

    Deliberately not a ``RuntimeError`` or ``ValueError``: a test that expects one of those from
    the answer must not mistake this one for it.
    """


class _Entry:
    """One blocked object: its dotted name, the object, and how to run it when allowed."""

    def __init__(self, name: str, obj):
        self.name = name
        self.obj = obj
        self.calls = 0
        self.swapped: list[tuple[types.FunctionType, types.CodeType]] = []
        self.run = obj  # what runs while blocking is suspended (replaced for a swapped function)


_ENTRIES: dict[str, _Entry] = {}  # token -> entry, for the swapped code objects
_state = {"suspended": 0}


def _call(entry: _Entry, target, how: str, args, kwargs):
    if _state["suspended"]:
        return target(*args, **kwargs)
    entry.calls += 1
    raise BlockedError(MESSAGE.format(name=entry.name, how=how))


def _call_token(token: str, args, kwargs):
    """What a swapped function's code runs (the token names its entry)."""
    entry = _ENTRIES.get(token)
    if entry is None:  # only reachable if a stand-in code object outlived its block
        raise BlockedError(f"{token} is blocked (stale stand-in)")
    return _call(entry, entry.run, "through a reference to the function itself", args, kwargs)


@contextlib.contextmanager
def _suspended() -> Iterator[None]:
    _state["suspended"] += 1
    try:
        yield
    finally:
        _state["suspended"] -= 1


def _resolve(name: str):
    """The object a dotted name such as ``"kdlib.losses.kd_loss"`` refers to."""
    if not isinstance(name, str) or not name.startswith("kdlib.") or name.count(".") < 2:
        raise ValueError(
            f"name must be a dotted kdlib name like 'kdlib.losses.kd_loss', got {name!r}"
        )
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                raise ValueError(f"name: {name!r} does not exist ({obj!r} has no {attr!r})")
            obj = getattr(obj, attr)
        if not callable(obj):
            raise ValueError(f"name: {name!r} is not a function or a class")
        return obj
    raise ValueError(f"name: no module of {name!r} can be imported")


def _partial_target(value, objects: dict[int, _Entry]):
    """The entry a (possibly nested) functools.partial wraps, else None."""
    while isinstance(value, functools.partial):
        value = value.func
        if id(value) in objects:
            return objects[id(value)]
    return None


class _BlockedClassMeta(type):
    """Stand-in for a class: calling it raises; isinstance/issubclass still answer truly."""

    def __call__(cls, *args, **kwargs):
        return _call(cls._kdlib_entry, cls._kdlib_entry.obj, cls._kdlib_how, args, kwargs)

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._kdlib_entry.obj)

    def __subclasscheck__(cls, sub):
        return issubclass(sub, cls._kdlib_entry.obj)


def _stand_in(entry: _Entry, original, how: str):
    """A callable that raises BlockedError (or, while suspended, calls ``original``)."""
    if isinstance(entry.obj, type) and original is entry.obj:
        return _BlockedClassMeta(
            entry.obj.__name__,
            (),
            {"_kdlib_entry": entry, "_kdlib_how": how, "__doc__": f"{entry.name} (blocked)"},
        )
    run = entry.run if original is entry.obj else original

    def stand_in(*args, **kwargs):
        return _call(entry, run, how, args, kwargs)

    stand_in.__name__ = stand_in.__qualname__ = getattr(entry.obj, "__name__", "blocked")
    stand_in.__doc__ = f"{entry.name} (blocked while a graded test runs)"
    stand_in._kdlib_blocked = entry.name
    return stand_in


def _swap_code(entry: _Entry) -> None:
    """Give the function (or the innermost closure-free function it wraps) a raising body."""
    fn = entry.obj
    seen = set()
    while isinstance(fn, types.FunctionType) and id(fn) not in seen:
        seen.add(id(fn))
        if not fn.__closure__:
            break
        fn = getattr(fn, "__wrapped__", None)
    if not isinstance(fn, types.FunctionType) or fn.__closure__:
        return  # e.g. a builtin or a closure: its names are still replaced
    token = f"{entry.name}#{id(fn)}"
    source = (
        f"def {fn.__name__}(*args, **kwargs):\n"
        "    import kdlib.exercises\n"
        f"    return kdlib.exercises._call_token({token!r}, args, kwargs)\n"
    )
    scope: dict = {}
    exec(compile(source, f"<kdlib.exercises: {entry.name} is blocked>", "exec"), scope)
    original_code = fn.__code__
    copy = types.FunctionType(
        original_code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__dict__.update(fn.__dict__)
    if fn is entry.obj:
        entry.run = copy
    _ENTRIES[token] = entry
    fn.__code__ = scope[fn.__name__].__code__
    entry.swapped.append((fn, original_code))
    entry.token = token


class Blocked:
    """What ``with blocked(...)`` returns: kdlib's originals, callable as if nothing were blocked.

    ``ref.kd_loss`` (the last part of a blocked name) or ``ref["kdlib.losses.kd_loss"]``: a
    blocked function comes back wrapped so that it (and every blocked function it calls) runs;
    a blocked class comes back as the class itself (use ``with ref.unblocked():`` around the
    calls of its methods if they call something blocked, or ``ref.run(method, *args)``).
    """

    def __init__(self, entries: list[_Entry]):
        self._entries = {e.name: e for e in entries}
        self._short = {e.name.rsplit(".", 1)[1]: e for e in entries}

    @property
    def names(self) -> list[str]:
        """The dotted names blocked."""
        return list(self._entries)

    def _get(self, entry: _Entry):
        if isinstance(entry.obj, type):
            return entry.obj
        run = entry.run

        @functools.wraps(entry.obj)
        def reference(*args, **kwargs):
            with _suspended():
                return run(*args, **kwargs)

        return reference

    def __getitem__(self, name: str):
        if name not in self._entries:
            raise KeyError(f"{name!r} is not blocked here; blocked: {', '.join(self._entries)}")
        return self._get(self._entries[name])

    def __getattr__(self, short: str):
        if short.startswith("_") and short not in self.__dict__.get("_short", {}):
            raise AttributeError(short)
        try:
            return self._get(self._short[short])
        except KeyError:
            raise AttributeError(
                f"{short!r} is not blocked here; blocked: {', '.join(self._entries)}"
            ) from None

    @staticmethod
    def run(fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with every blocked object working as usual (for a reference
        computed by a blocked class's instance, say)."""
        with _suspended():
            return fn(*args, **kwargs)

    @staticmethod
    def unblocked():
        """Context manager: inside it, every blocked object works as usual."""
        return _suspended()

    @property
    def calls(self) -> dict[str, int]:
        """How many times the answer called each blocked object (caught errors included)."""
        return {name: e.calls for name, e in self._entries.items()}


def _kdlib_modules() -> list[types.ModuleType]:
    return [
        m
        for name, m in list(sys.modules.items())
        if isinstance(m, types.ModuleType)
        and (name == "kdlib" or name.startswith("kdlib."))
        and name != __name__
    ]


@contextlib.contextmanager
def blocked(*names: str, namespace: MutableMapping | None = None) -> Iterator[Blocked]:
    """Block kdlib's implementations ``names`` (dotted: ``"kdlib.losses.kd_loss"``) in the block.

    Args:
        names: one or more dotted names of kdlib functions or classes.
        namespace: the notebook's globals (``globals()``); default: the caller's globals.
            Every name there bound to a blocked object, or to a ``functools.partial`` of one,
            is replaced for the duration of the block.

    Yields a :class:`Blocked` giving the test kdlib's originals. Raises :class:`BlockedError`
    on exit when the answer called a blocked object and swallowed the error.
    """
    if not names:
        raise ValueError("names: block at least one kdlib function or class")
    if namespace is None:
        namespace = sys._getframe(2).f_globals  # the frame that entered the `with`
    if not isinstance(namespace, MutableMapping):
        raise ValueError(f"namespace must be a dict such as globals(), got {type(namespace)}")
    entries, objects = [], {}
    for name in dict.fromkeys(names):
        obj = _resolve(name)
        if isinstance(obj, functools.partial) or getattr(obj, "_kdlib_blocked", None):
            raise ValueError(f"name: {name!r} is already blocked or is not kdlib's own object")
        if id(obj) in objects:
            continue  # two names of one object
        entry = _Entry(name, obj)
        entries.append(entry)
        objects[id(obj)] = entry
    replaced: list[tuple[MutableMapping, str, object]] = []
    try:
        scopes = [(vars(m), f"as {m.__name__}.{{}}") for m in _kdlib_modules()]
        scopes.append((namespace, "as {} in the notebook"))
        for scope, where in scopes:
            for key, value in list(scope.items()):
                entry = objects.get(id(value))
                target = value
                if entry is None:
                    entry = _partial_target(value, objects)
                    if entry is None:
                        continue
                    how = "through a functools.partial " + where.format(key)
                else:
                    how = where.format(key)
                replaced.append((scope, key, value))
                scope[key] = _stand_in(entry, target, how)
        for entry in entries:
            if isinstance(entry.obj, types.FunctionType):
                _swap_code(entry)
        yield Blocked(entries)
    finally:
        for entry in entries:
            for fn, code in entry.swapped:
                fn.__code__ = code
            _ENTRIES.pop(getattr(entry, "token", None), None)
        for scope, key, value in reversed(replaced):
            scope[key] = value
    called = {e.name: e.calls for e in entries if e.calls}
    if called:
        raise BlockedError(
            MESSAGE.format(name=", ".join(called), how="and went on after the error")
        )
