"""``seqpar`` console script: dispatches to ``demo``, ``train`` and ``bench``.

Each subcommand lives in its own module with a ``main(argv) -> int`` so the
CLI stays a thin router and heavy imports happen only for the command used.
"""

from __future__ import annotations

import sys

from .router import route

COMMANDS = {
    "demo": ("seqpar.demo", "every strategy on a random problem, checked against dense"),
    "train": ("seqpar.train.cli", "train a long-context transformer with sequence parallelism"),
    "bench": ("seqpar.bench.cli", "benchmarks: `seqpar bench attention`"),
    "plan": ("seqpar.memory.plan_cli", "memory planner: peak memory, fastest fit, longest fit"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``seqpar`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from . import __version__

        print(f"seqpar {__version__}")
        return 0
    return route("seqpar", "command", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
