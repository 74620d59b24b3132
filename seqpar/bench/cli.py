"""``seqpar bench <benchmark>``: a thin router so each benchmark imports only what it needs."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "attention": ("seqpar.bench.attention",
                  "fwd+bwd attention throughput vs torch context_parallel"),
    "report": ("seqpar.bench.report", "print the table / write the plot from a bench JSON file"),
}


def _usage() -> str:
    lines = ["usage: seqpar bench <benchmark> [options]", "", "benchmarks:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in BENCHMARKS.items()]
    lines += ["", "`seqpar bench <benchmark> --help` for its options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its benchmark module's ``main(rest)``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"seqpar bench: unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
