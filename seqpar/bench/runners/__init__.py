"""What ``seqpar bench attention`` can time, one module per runner.

``base.Runner`` is the interface; ``ours`` (seqpar's strategies), ``torch_cp``
(PyTorch's context_parallel, the peer) and ``ceiling`` (one-device SDPA) implement
it. A new peer is one more module here plus one line in ``grid.RUNNERS``.
"""

from .base import Built, RunContext, Runner
from .ceiling import SdpaCeiling
from .ours import SeqparRunner
from .torch_cp import TorchContextParallel

__all__ = ["Built", "RunContext", "Runner", "SdpaCeiling", "SeqparRunner",
           "TorchContextParallel"]
