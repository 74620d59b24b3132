"""``seqpar bench <benchmark>``: a thin router so each benchmark imports only what it needs."""

from __future__ import annotations

import sys

from ..router import route

BENCHMARKS = {
    "attention": ("seqpar.bench.attention",
                  "fwd+bwd attention throughput vs torch context_parallel"),
    "paper": ("seqpar.bench.paper.cli",
              "the paper's experiments: SP vs Megatron TP on BERT (max batch/length)"),
    "report": ("seqpar.bench.report", "print the table / write the plot from a bench JSON file"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its benchmark module's ``main(rest)``; returns the exit code."""
    return route("seqpar bench", "benchmark", BENCHMARKS, argv)


if __name__ == "__main__":
    sys.exit(main())
