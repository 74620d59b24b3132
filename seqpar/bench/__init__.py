"""Benchmarks behind ``seqpar bench``.

``seqpar bench attention`` times fwd+bwd of every strategy and layout next to
PyTorch's own ``context_parallel`` and the single-GPU SDPA ceiling, in one run
on the same devices, and writes a table, a JSON file and a plot;
``seqpar bench report`` re-renders the table and plot from that JSON.
"""
