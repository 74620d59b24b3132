"""``seqpar bench paper``: the experiments of Li et al. 2021 (arXiv 2105.13120),
sequence parallelism vs Megatron tensor parallelism on BERT, reproduced.

Module map (docs/paper.md explains the experiments, docs/design.md the layering):

* :mod:`.memory_cap`   per-GPU memory cap (a 16 GB P100 on any GPU; simulated on CPU)
* :mod:`.search`       the largest batch / length that fits: doubling, then bisection
* :mod:`.megatron`     the paper's baseline, plain Megatron TP (no sequence parallelism)
* :mod:`.trial`        one config: build, wire SP or TP, a few fwd+bwd+AdamW steps
* :mod:`.experiments`  experiments 1-4 over P and methods
* :mod:`.memory_model` the paper's per-device memory formulas, fitted, extrapolated
* :mod:`.reported`     the paper's own numbers, printed beside ours
* :mod:`.table`, :mod:`.plot`  the paper's table layout, PNG figures
* :mod:`.cli`          argument parsing, launching, JSON
"""
