"""Subcommand routing shared by ``seqpar`` and ``seqpar bench``: each entry names a
module with ``main(argv) -> int``, imported only when that command runs."""

from __future__ import annotations

import importlib
import sys


def route(prog: str, what: str, table: dict[str, tuple[str, str]],
          argv: list[str] | None) -> int:
    """Dispatch ``argv[0]`` to its module's ``main(argv[1:])``; print usage on -h."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "\n".join([f"usage: {prog} <{what}> [options]", "", f"{what}s:"]
                      + [f"  {name:<10} {help_}" for name, (_, help_) in table.items()]
                      + ["", f"`{prog} <{what}> --help` for its options."]
                      + (["`seqpar --version` prints the version."] if prog == "seqpar" else []))
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown {what} {name!r}\n\n{usage}", file=sys.stderr)
        return 2
    return int(importlib.import_module(table[name][0]).main(rest) or 0)
