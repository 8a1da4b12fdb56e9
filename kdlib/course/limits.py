"""The memory and file-size limits of a submission's kernel (``kdlib grade --memory-limit``,
``--file-limit``).

They are set on the kernel's process alone: the grader's process for a submission is forked
from the grader (nbgrader, torch and whatever the caller holds are already in its memory), so a
limit set there would count the grader's memory against the student. In bubblewrap the kernel's
command starts with :func:`limited_command`'s prefix, which sets the limits and then ``exec``s
the kernel; without a sandbox the submission's process sets them on itself before it starts the
kernel (:func:`set_resource_limits`). Only the standard library is imported here: the prefix
imports this module in the kernel's interpreter before anything else.
"""

from __future__ import annotations

import inspect

__all__ = ["limited_command", "set_resource_limits"]


def set_resource_limits(memory: int | None, files: int | None) -> None:
    """Limit this process and those it starts: ``memory`` bytes of data (heap and private
    mappings, ``RLIMIT_DATA``: an allocation past it fails with a MemoryError) and ``files``
    bytes per file written (``RLIMIT_FSIZE``: a write past it fails with
    ``OSError: File too large``). None or 0: no limit. Not on Windows."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return
    for kind, value in ((resource.RLIMIT_DATA, memory), (resource.RLIMIT_FSIZE, files)):
        if value:
            hard = resource.getrlimit(kind)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(kind, (value, value))  # hard too: the kernel cannot raise it


def limited_command(cmd: list[str], memory: int | None, files: int | None) -> list[str]:
    """``cmd`` (a kernel's command, its interpreter first) run under the limits: the same
    interpreter sets them (:func:`set_resource_limits`) and then replaces itself with ``cmd``."""
    if not (memory or files):
        return list(cmd)
    # the function's own source, so that the kernel's interpreter needs nothing importable (a
    # kernel that cannot import kdlib must still start, and fail where the canary reports it)
    prefix = (
        "import os, sys\n"
        + inspect.getsource(set_resource_limits)
        + "set_resource_limits(int(sys.argv[1]), int(sys.argv[2]))\n"
        + "os.execv(sys.argv[3], sys.argv[3:])\n"
    )
    return [cmd[0], "-c", prefix, str(memory or 0), str(files or 0), *cmd]
