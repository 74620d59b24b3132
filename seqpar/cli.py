"""``seqpar`` console script: dispatches to ``demo``, ``train`` and ``bench``.

Each subcommand lives in its own module with a ``main(argv) -> int`` so the
CLI stays a thin router and heavy imports happen only for the command used.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("seqpar.demo", "every strategy on a random problem, checked against dense"),
    "train": ("seqpar.train.cli", "train a long-context transformer with sequence parallelism"),
    "bench": ("seqpar.bench.cli", "benchmarks: `seqpar bench attention`"),
}


def _usage() -> str:
    lines = ["usage: seqpar <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`seqpar <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"seqpar: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
