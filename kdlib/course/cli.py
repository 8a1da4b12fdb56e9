"""The ``kdlib`` command.

    kdlib course run [--fast] [--device auto|cpu|cuda|mps] [--only 03,04] [--jobs N]
    kdlib course site [--run build/course] [--out build/site]
    kdlib grade [ASSIGNMENT ...] --submissions DIR [--db URL] [--out DIR]
    kdlib gradebook export --db URL    grades.csv, issues.csv, feedback from a gradebook
    kdlib release [ASSIGNMENT ...]      regenerate notebooks/ from solutions/ with nbgrader
    kdlib data download NAME [--root data]
    kdlib device                        which device kdlib would use here

``course run``, ``grade`` and ``release`` live in the module that does the work
(:mod:`kdlib.course.run`, :mod:`kdlib.course.grade`, :mod:`kdlib.course.release`); each
provides ``add_arguments(parser, path)`` and ``main(args)``. ``data download`` and ``device``
are thin wrappers around library functions and are defined here. Modules are imported only when
their subcommand runs, so ``kdlib --help`` stays fast, and a command that needs the ``course``
extra says so when it is not installed instead of failing deep inside.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# The packages the course machinery imports (the "course" extra of pyproject.toml).
COURSE_PACKAGES = ("nbformat", "nbclient", "nbconvert", "papermill", "nbgrader", "jupyter_client")


class _DataCommand:
    """``kdlib data download NAME``: fetch a torchvision dataset into ``data/``."""

    needs_course_extra = False

    @staticmethod
    def add_arguments(parser, path) -> None:
        from kdlib.data import DATASETS

        parser.add_argument("name", choices=sorted(DATASETS), help="dataset to fetch")
        parser.add_argument("--root", default=None, help="folder to store it in (default: data/)")

    @staticmethod
    def main(args) -> int:
        from kdlib.data import download

        try:
            where = download(args.name, args.root)
        except FileNotFoundError as err:
            print(err)
            return 1
        print(f"{args.name} is in {where}")
        return 0


class _DeviceCommand:
    """``kdlib device``: print the device kdlib picks on this machine."""

    needs_course_extra = False

    @staticmethod
    def add_arguments(parser, path) -> None:
        pass

    @staticmethod
    def main(args) -> int:
        import torch

        from kdlib.runtime import pick_device

        device = pick_device("auto")
        detail = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
        print(f"kdlib uses {device}{': ' + detail if detail else ''} (torch {torch.__version__})")
        return 0


# subcommand path -> (module or command object, help)
_ALL_COMMANDS = {
    ("course", "run"): ("kdlib.course.run", "execute the course notebooks headless and report"),
    ("course", "site"): ("kdlib.course.site", "build the course website (offline, static)"),
    ("grade",): ("kdlib.course.grade", "autograde a folder of submissions: grades and feedback"),
    ("gradebook", "export"): (
        "kdlib.course.export",
        "write grades.csv, issues.csv and the feedback from a gradebook (after --shard)",
    ),
    ("release",): ("kdlib.course.release", "regenerate notebooks/ from solutions/ with nbgrader"),
    ("data", "download"): (_DataCommand, "download a torchvision dataset into data/"),
    ("device",): (_DeviceCommand, "print the device kdlib picks on this machine"),
}


# a subcommand whose module is absent is left out (the student edition ships no grader, runner
# or release tool)
COMMANDS = {
    path: entry
    for path, entry in _ALL_COMMANDS.items()
    if not isinstance(entry[0], str) or importlib.util.find_spec(entry[0]) is not None
}


def missing_course_packages() -> list[str]:
    """The packages of the ``course`` extra that are not installed here."""
    return [name for name in COURSE_PACKAGES if importlib.util.find_spec(name) is None]


def _command(target):
    return importlib.import_module(target) if isinstance(target, str) else target


def _needs_course_extra(target) -> bool:
    return getattr(target, "needs_course_extra", isinstance(target, str))


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlib", description=__doc__.split("\n")[0])
    groups: dict[tuple, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups[()] = top
    for path, (target, help_text) in COMMANDS.items():
        for depth in range(1, len(path)):  # intermediate groups such as "course", "data"
            prefix = path[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = sub.add_subparsers(dest=f"{'_'.join(prefix)}_command")
                groups[prefix].required = True
        leaf = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        leaf.set_defaults(_target=target, _command=" ".join(path))
        # only import the module whose subcommand is being parsed (keeps --help fast), and only
        # when what it needs is installed (main() then explains what is missing)
        wanted = [a for a in argv if not a.startswith("-")][: len(path)]
        if tuple(wanted) != path:
            continue
        if not (_needs_course_extra(target) and missing_course_packages()):
            _command(target).add_arguments(leaf, path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if _needs_course_extra(args._target):
        missing = missing_course_packages()
        if missing:
            print(
                f"kdlib {args._command}: this command needs the course machinery, which is not "
                f"installed (missing: {', '.join(missing)}). Install the 'course' extra: "
                "python -m pip install 'kdlib[course]' (or, in a clone of the course, "
                "python -m pip install -e '.[course]').",
                file=sys.stderr,
            )
            return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return int(_command(args._target).main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
