"""Memory options for long sequences: model-agnostic modules the training step wires in.

* :mod:`.chunked_loss` - fused LM head + cross-entropy over token chunks (no whole logits);
* :mod:`.tiled_mlp` - token-wise modules run over sequence tiles, recomputed per tile;
* :mod:`.offload` - activation checkpointing modes (full, selective, host offload);
* :mod:`.planner` - the analytic memory model behind ``seqpar plan``.

Nothing is imported here on purpose: ``seqpar.parallel`` and ``seqpar.train`` import
these submodules, and an eager import would close an import cycle through
``seqpar.train``'s package init. Import the submodule you need.
"""
