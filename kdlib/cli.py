"""The ``kdlib`` command.

    kdlib course run [--fast] [--device auto|cpu|cuda] [--only 03,04] [--out build/course]
    kdlib grade [ASSIGNMENT ...] --submissions DIR [--db URL] [--out DIR]
    kdlib release [ASSIGNMENT ...]      regenerate notebooks/ from solutions/ with nbgrader
    kdlib data download NAME [--root data]
    kdlib device                        which device kdlib would use here

Each subcommand lives in the module that does the work; this file only wires them up.
Heavy modules are imported when their subcommand runs, so ``kdlib --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand path -> (module, help). The module provides add_arguments(parser) and main(args).
COMMANDS = {
    ("course", "run"): ("kdlib.course", "execute the course notebooks headless and report"),
    ("grade",): ("kdlib.grading", "autograde a folder of submissions into grades and feedback"),
    ("release",): ("kdlib.release", "regenerate notebooks/ from solutions/ with nbgrader"),
    ("data", "download"): ("kdlib.data", "download a torchvision dataset into data/"),
    ("device",): ("kdlib.distill", "print the device kdlib picks on this machine"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlib", description=__doc__.split("\n")[0])
    groups: dict[tuple, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    groups[()] = top
    for path, (module_name, help_text) in COMMANDS.items():
        for depth in range(1, len(path)):  # intermediate groups such as "course", "data"
            prefix = path[:depth]
            if prefix not in groups:
                sub = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands")
                groups[prefix] = sub.add_subparsers(dest=f"{'_'.join(prefix)}_command")
                groups[prefix].required = True
        leaf = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text)
        leaf.set_defaults(_module=module_name, _command=" ".join(path))
        # only import the module whose subcommand is being parsed (keeps --help fast)
        wanted = [a for a in argv if not a.startswith("-")][: len(path)]
        if tuple(wanted) == path:
            importlib.import_module(module_name).add_arguments(leaf, path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module = importlib.import_module(args._module)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
