"""Small helpers shared by the demo, the benchmark, training and the tests.

``numerics``: dtype names, tolerance table, relative error; ``memory``: peak memory
of a region. Kept free of torch.distributed and of the rest of seqpar, so any
layer may import them.
"""
