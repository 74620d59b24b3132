"""The largest value that fits: double from a start until a trial fails, then bisect.

Pure logic over a ``fits(x) -> bool`` callable, so it is tested against an
injected limit without any model. Every rank must call it with callables that
agree across ranks (the trial's outcome is agreed before it returns), so every
rank takes the same path. Values are multiples of ``granule`` (a length must
split over the ranks). A budget (trials, seconds) can stop the search early; the
result then says the maximum is only a lower bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    """``best``: the largest value that fit (0: not even ``start``); ``first_fail``: the
    smallest value seen failing (None: never failed); ``exact``: best is the boundary
    within one granule; ``stopped``: why the search ended early, or ""."""

    best: int
    first_fail: int | None
    trials: list[tuple[int, bool]] = field(default_factory=list)
    exact: bool = False
    stopped: str = ""

    def to_dict(self) -> dict:
        return {"best": self.best, "first_fail": self.first_fail, "exact": self.exact,
                "stopped": self.stopped, "trials": [list(t) for t in self.trials]}


def find_max(fits: Callable[[int], bool], start: int, *, granule: int = 1,
             limit: int | None = None, max_trials: int = 16,
             out_of_time: Callable[[], bool] = lambda: False) -> SearchResult:
    """The largest multiple of ``granule`` ≥ ``start`` (≤ ``limit``) with ``fits`` true,
    assuming fits is monotone (true up to a boundary, false beyond)."""
    if granule < 1 or start < granule or start % granule:
        raise ValueError(f"search: start={start} must be a positive multiple of "
                         f"granule={granule}")
    if limit is not None and limit < start:
        raise ValueError(f"search: limit={limit} is below start={start}")
    res = SearchResult(best=0, first_fail=None)

    def trial(x: int) -> bool | None:
        if len(res.trials) >= max_trials:
            res.stopped = f"trial budget ({max_trials}) used"
            return None
        if out_of_time():
            res.stopped = "time budget used"
            return None
        ok = bool(fits(x))
        res.trials.append((x, ok))
        if ok:
            res.best = max(res.best, x)
        else:
            res.first_fail = x if res.first_fail is None else min(res.first_fail, x)
        return ok

    x = start
    while True:  # doubling: find a failing value (or the limit)
        ok = trial(x)
        if ok is None:
            return res
        if not ok:
            break
        if limit is not None and x >= limit:
            res.exact = True  # everything up to the limit fits
            res.stopped = f"reached the limit {limit}"
            return res
        x = 2 * x if limit is None else min(2 * x, limit // granule * granule)
    lo, hi = res.best, res.first_fail  # lo fits (or 0), hi fails
    while hi - lo > granule:  # bisection on multiples of granule
        mid = (lo + hi) // 2 // granule * granule
        if mid <= lo:
            mid = lo + granule
        ok = trial(mid)
        if ok is None:
            return res
        lo, hi = (mid, hi) if ok else (lo, mid)
    res.exact = True
    return res
