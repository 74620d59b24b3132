"""The paper's per-device memory formulas for SP and TP, fitted to our measured points
and extrapolated to the paper's P = 64.

Li et al. (2021, §3) count, per transformer layer and device, in elements, with
batch ``B``, length ``L``, hidden ``H``, heads ``Z`` and ``N`` devices (weights,
gradients and Adam's two states are the ``48 H²``: 12 H² parameters x 4)::

    MLP block        SP: 32 H² + 5 BLH/N               TP: 32 H²/N + 4 BLH/N + BLH
    attention block  SP: 16 H² + 4 BLH/N + BZL²/N      TP: 16 H²/N + 3 BLH/N + BLH + BZL²/N

so SP needs less memory than TP once ``BL > 32 H`` (MLP) and ``BL > 16 H``
(attention), and TP cannot use more devices than heads. We add Megatron TP-SP
(not in the paper): ``48 H²/N + 9 BLH/N + BZL²/N``.

Our trials checkpoint activations and keep embeddings and the MLM head, so the
constants differ: the fit keeps the formula's *shape* and learns three
non-negative byte coefficients per method, ``peak = c + s_lin·A_lin + s_quad·A_quad``
on top of the exact state bytes ``4·W`` (fp32), where ``A_lin`` is the layer's
``BLH`` terms and ``A_quad`` its ``BZL²/N`` term (times the layer count). The
extrapolation then solves for the largest batch / length under the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...models import model_config
from .memory_cap import GIB

BYTES = 4  # fp32 states


def terms(method: str, n_layers: int, h: int, z: int, p: int, b: int, length: int
          ) -> tuple[float, float, float]:
    """(state elements W, linear activation elements, quadratic elements) per device."""
    blh = b * length * h
    quad = b * z * length * length / p
    if method == "tp":
        w, lin = 48 * h * h / p, 7 * blh / p + 2 * blh
    elif method == "tp-sp":
        w, lin = 48 * h * h / p, 9 * blh / p
    else:  # sequence parallelism (rsa, ring, ulysses, linformer's dense part)
        w, lin = 48 * h * h, 9 * blh / p
    return n_layers * w, n_layers * lin, n_layers * quad


@dataclass
class Fit:
    """``peak_bytes = c + 4 W + s_lin A_lin + s_quad A_quad`` for one (model, method)."""

    model: str
    method: str
    c: float
    s_lin: float
    s_quad: float
    points: int
    rms_rel_error: float

    def predict(self, p: int, b: int, length: int) -> float:
        cfg = model_config(self.model)
        w, lin, quad = terms(self.method, cfg.n_layers, cfg.dim, cfg.n_heads, p, b, length)
        return self.c + BYTES * w + self.s_lin * lin + self.s_quad * quad

    def to_dict(self) -> dict:
        return {"model": self.model, "method": self.method, "c_gib": self.c / GIB,
                "bytes_per_linear_element": self.s_lin, "bytes_per_quadratic_element":
                self.s_quad, "points": self.points, "rms_rel_error": self.rms_rel_error}


def fit(model: str, method: str, points: list[tuple[int, int, int, float]]) -> Fit | None:
    """Least squares with non-negative coefficients (features dropped while negative).

    ``points``: (P, B, L, peak bytes) of trials that fit. None with < 3 distinct points.
    """
    points = sorted(set(points))
    if len(points) < 3:
        return None
    cfg = model_config(model)
    rows, ys = [], []
    for p, b, length, peak in points:
        w, lin, quad = terms(method, cfg.n_layers, cfg.dim, cfg.n_heads, p, b, length)
        rows.append([1.0, lin, quad])
        ys.append(peak - BYTES * w)
    a = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    active = [0, 1, 2]
    coef = torch.zeros(3, dtype=torch.float64)
    while active:
        scale = a[:, active].abs().amax(0).clamp_min(1e-30)  # column scaling for conditioning
        sol = torch.linalg.lstsq(a[:, active] / scale, y[:, None]).solution[:, 0] / scale
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(sol.argmin()))
    pred = a @ coef
    peaks = torch.tensor([pt[3] for pt in points], dtype=torch.float64)
    rel = (pred - y) / peaks  # error relative to the measured peak
    rms = float(rel.pow(2).mean().sqrt())
    return Fit(model, method, float(coef[0]), float(coef[1]), float(coef[2]), len(points), rms)


def largest(fits: Callable[[int], bool], hi: int = 1 << 40) -> int:
    """The largest x ≥ 1 with ``fits(x)`` (monotone), 0 if none: doubling + bisection."""
    if not fits(1):
        return 0
    lo = 1
    while lo < hi and fits(2 * lo):
        lo *= 2
    top = min(2 * lo, hi)
    while top - lo > 1:
        mid = (lo + top) // 2
        lo, top = (mid, top) if fits(mid) else (lo, mid)
    return lo


def tp_degrees(n_heads: int, up_to: int) -> list[int]:
    """The TP degrees a model allows up to ``up_to`` GPUs (whole heads per rank)."""
    return [p for p in range(1, min(n_heads, up_to) + 1) if n_heads % p == 0]


def extrapolate(sp: Fit, tp: Fit, cap_bytes: float, *, p_sp: int = 64, batch_len: int = 512,
                fixed_batch: int = 64) -> dict:
    """The paper's headline ratios from the fits: SP on ``p_sp`` GPUs vs TP's best."""
    cfg = model_config(sp.model)
    tps = tp_degrees(cfg.n_heads, p_sp)

    def max_b(f: Fit, p: int) -> int:
        return largest(lambda b: f.predict(p, b, batch_len) <= cap_bytes)

    def max_l(f: Fit, p: int) -> int:
        return largest(lambda n: f.predict(p, fixed_batch, n) <= cap_bytes, hi=1 << 30)

    sp_b, tp_b = max_b(sp, p_sp), max(max_b(tp, p) for p in tps)
    sp_l, tp_l = max_l(sp, p_sp), max(max_l(tp, p) for p in tps)
    same = min(16, p_sp)
    tps_same = tp_degrees(cfg.n_heads, same)
    sp_l16, tp_l16 = max_l(sp, same), max(max_l(tp, p) for p in tps_same)
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return {"cap_gib": cap_bytes / GIB, "P_sp": p_sp, "P_tp_best": max(tps),
            "max_batch": {"sp": sp_b, "tp": tp_b, "ratio": ratio(sp_b, tp_b)},
            "max_length": {"sp": sp_l, "tp": tp_l, "ratio": ratio(sp_l, tp_l)},
            "max_length_same_16": {"P": same, "sp": sp_l16, "tp": tp_l16,
                                   "ratio": ratio(sp_l16, tp_l16)}}


def points_from(results: dict, model: str, method: str) -> list[tuple[int, int, int, float]]:
    """(P, B, L, peak bytes) of every trial of ``method`` on ``model`` that fit."""
    out = []
    res = results.get(model, {})
    for exp in ("max_batch", "max_length"):
        for row in res.get(exp, []):
            if row["method"] != method:
                continue
            for t in row.get("trials", []):
                if t["status"] == "ok":
                    b = t["x"] if row["searched"] == "batch" else row["batch"]
                    n = t["x"] if row["searched"] == "seq_len" else row["seq_len"]
                    out.append((row["P"], b, n, t["peak_gib"] * GIB))
    for row in res.get("weak_scaling", []):
        if row["method"] == method and row["status"] == "ok":
            out.append((row["P"], row["batch"], row["seq_len"], row["peak_gib"] * GIB))
    return out


def model_report(results: dict, cap_bytes: float, *, fixed_batch: int = 64,
                 batch_len: int = 512) -> dict:
    """Fits per (model, method) and, where both rsa and tp fitted, the extrapolation."""
    out: dict = {}
    for model, res in results.items():
        methods = sorted({r["method"] for exp in ("max_batch", "max_length", "weak_scaling")
                          for r in res.get(exp, [])})
        fits = {m: fit(model, m, points_from(results, model, m)) for m in methods}
        entry: dict = {"fits": {m: f.to_dict() if f else None for m, f in fits.items()}}
        sp = fits.get("rsa") or fits.get("ring") or fits.get("ulysses")
        if sp and fits.get("tp"):
            entry["extrapolation"] = {"sp_method": sp.method, **extrapolate(
                sp, fits["tp"], cap_bytes, fixed_batch=fixed_batch, batch_len=batch_len)}
        else:
            entry["extrapolation"] = None
        out[model] = entry
    return out
