"""The paper's reported numbers (Li et al. 2021, arXiv 2105.13120; Piz Daint, one 16 GB
P100 per node), as summarised in seqpar issue 16, printed beside ours.

Only numbers stated there are here; where the paper's value for a P is not
listed we print nothing rather than guess.
"""

from __future__ import annotations

SOURCE = "Li et al. 2021 (arXiv 2105.13120), as summarised in seqpar issue 16"
HARDWARE = "Piz Daint: one 16 GB NVIDIA P100 per node"

REPORTED: dict = {
    "max_batch": {  # at length 512: SP on 64 GPUs vs TP's best (at most one GPU per head)
        "bert-base": {"ratio": 13.7, "P_sp": 64, "P_tp": 12},
        "bert-large": {"ratio": 10.2, "P_sp": 64, "P_tp": 16},
    },
    "max_length": {  # at batch 64
        "ratio_at_64": 3.0,
        "ratio_same_16": 1.4,
    },
    "weak_scaling": {  # Table 4, P = 1, 2, 4, 8
        "sp_memory_mb_flat": 8480,
        "note": "SP's per-GPU memory stays ≈ 8,480 MB from 1 to 8 GPUs; TP's grows until "
                "out of memory",
    },
    "linformer": {"sp_tokens": 114_000, "P": 32, "ratio_vs_one_device": 27},
}


def reported_ratio(experiment: str, model: str) -> float | None:
    """The paper's headline ratio for an experiment and model (None if not reported)."""
    if experiment == "max_batch":
        return REPORTED["max_batch"].get(model, {}).get("ratio")
    if experiment == "max_length":
        return REPORTED["max_length"]["ratio_at_64"]
    return None
