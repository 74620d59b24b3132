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
    return route("seqpar", "command", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
