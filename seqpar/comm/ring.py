"""Point-to-point ring exchange: send to rank+1, receive from rank-1.

Not an autograd Function: ring attention owns its forward and backward and
drives the exchange explicitly, so the next block is in flight while the
current one computes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .groups import group_rank_size
from .stats import record


class RingExchange:
    """Asynchronous shift of one buffer one step around the ring.

    ``start(x)`` posts the send of ``x`` to the next rank and the receive of
    the previous rank's buffer (same shape/dtype); ``wait()`` returns that
    buffer. Every rank must call ``start``/``wait`` in the same order.
    """

    def __init__(self, group: dist.ProcessGroup):
        rank, world = group_rank_size(group)
        self.group = group
        self.next = dist.get_global_rank(group, (rank + 1) % world)
        self.prev = dist.get_global_rank(group, (rank - 1) % world)
        self._reqs: list | None = None
        self._recv: torch.Tensor | None = None

    def start(self, send: torch.Tensor) -> None:
        if self._reqs is not None:
            raise RuntimeError("RingExchange.start called twice without wait()")
        send = send.contiguous()
        self._recv = torch.empty_like(send)
        ops = [
            dist.P2POp(dist.isend, send, self.next, self.group),
            dist.P2POp(dist.irecv, self._recv, self.prev, self.group),
        ]
        self._reqs = dist.batch_isend_irecv(ops)
        self._send = send  # keep alive until the send completes
        record("p2p", send.numel() * send.element_size())

    def wait(self) -> torch.Tensor:
        if self._reqs is None:
            raise RuntimeError("RingExchange.wait called without start()")
        for req in self._reqs:
            req.wait()
        recv, self._recv, self._reqs, self._send = self._recv, None, None, None
        return recv
