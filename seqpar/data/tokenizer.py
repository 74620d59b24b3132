"""A byte-level tokenizer: every UTF-8 byte is a token, plus a few specials.

No downloads and no training: any text round-trips exactly, which is what a
long-context systems test needs from real data.
"""

from __future__ import annotations

import torch


class ByteTokenizer:
    """Ids 0..255 are bytes; ``PAD``, ``BOS``, ``EOS``, ``MASK`` follow.

    ``vocab_size`` is rounded up to a multiple of 8 so the embedding shards
    evenly and matmuls stay aligned.
    """

    PAD = 256
    BOS = 257
    EOS = 258
    MASK = 259
    vocab_size = 264

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([self.BOS] if bos else []) + ids + ([self.EOS] if eos else [])

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
