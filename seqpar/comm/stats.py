"""Bytes-on-the-wire accounting.

Every collective in :mod:`seqpar.comm` reports what this rank sends, so tests can
assert that a strategy moves exactly the volume its formula promises (a silent
extra all-gather is a bug) and the demo/bench can print it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class CommCounter:
    """Bytes this rank sent, in total and per collective kind."""

    bytes_sent: int = 0
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes_by_kind: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes_sent += int(nbytes)
        self.calls[kind] += 1
        self.bytes_by_kind[kind] += int(nbytes)


_active: list[CommCounter] = []


def record(kind: str, nbytes: int) -> None:
    """Add ``nbytes`` sent by this rank to every active counter."""
    for counter in _active:
        counter.add(kind, nbytes)


@contextmanager
def count_bytes() -> Iterator[CommCounter]:
    """Count the bytes this rank sends inside the ``with`` block (nests)."""
    counter = CommCounter()
    _active.append(counter)
    try:
        yield counter
    finally:
        _active.remove(counter)
