"""The `cwm` command: one entry point gathering the subcommands that each package offers.

Packages offer commands through the `cwm.commands` entry-point group (see pyproject.toml), so that this
module, on the lowest floor that has commands, never imports a higher floor. Each entry point is a function
`register(subparsers)` that adds its parsers and sets `func` on them; `func(args)` returns an exit code.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from cwm_envs.errors import CwmError


def group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of group `name` (`cwm NAME ...`), created on first use so several packages can add to it."""
    if name not in sub.choices:
        parser = sub.add_parser(name, help=help, description=help)
        parser.set_defaults(func=lambda _args, _p=parser: _p.print_help() or 2)
        parser._cwm_group = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    return sub.choices[name]._cwm_group


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cwm", description="cwm-envs: RL environments with verifiable rewards")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="cwm.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ModuleNotFoundError as exc:  # a plugin whose package is not installed offers no commands
            if exc.name and ep.value.startswith(exc.name):
                continue
            raise
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CwmError as exc:
        print(f"cwm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cwm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
