"""Text data for ``seqpar train --hf``: the model's own tokenizer, packed documents.

Same scheme as :class:`seqpar.data.text.TextDataset` (documents joined by EOS into
one stream; ``batch_size`` windows of ``seq_len`` at offsets drawn from the
``(seed, step)`` generator, so resuming needs no iterator state), but token ids
come from ``AutoTokenizer.from_pretrained(PATH)`` and each window carries
position ids that restart after every EOS: ``seqpar.hf.shard_batch`` turns them
into per-document ``cu_seqlens``. Labels stay unshifted (HF convention).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.synthetic import step_generator
from ..data.text import read_documents


def split_data_paths(data: str) -> list[str]:
    """``--data`` as paths; the synthetic tasks are refused (their ids are not words of
    the model's vocabulary: fine-tuning a real model on them would be meaningless)."""
    if data in ("passkey", "kv"):
        raise ValueError(f"--hf needs text data: pass --data FILE[,FILE...] (.txt, .jsonl "
                         f"with a 'text' field, .parquet); --data {data} is a synthetic task "
                         "over seqpar's own vocabulary")
    return [p for p in data.split(",") if p]


def read_texts(paths: list[str]) -> list[str]:
    """Documents of ``.txt`` / ``.jsonl`` (via :func:`read_documents`) and ``.parquet``
    (a ``text`` column; needs pyarrow) files."""
    docs: list[str] = []
    plain = []
    for p in paths:
        if Path(p).suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ValueError(f"{p}: reading .parquet needs pyarrow (pip install pyarrow)"
                                 ) from None
            if not Path(p).is_file():
                raise ValueError(f"data file {p!r} does not exist")
            table = pq.read_table(p, columns=["text"])
            docs += [str(t) for t in table.column("text").to_pylist()]
        else:
            plain.append(p)
    return read_documents(plain) + docs if plain else docs


class HFTextDataset:
    """Documents tokenized by the model's tokenizer, packed with EOS between them."""

    def __init__(self, paths: list[str], seq_len: int, tokenizer):
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token; packing documents needs one")
        self.eos = int(eos)
        self.seq_len = seq_len
        ids: list[int] = []
        for doc in read_texts(paths):
            ids += list(tokenizer(doc, add_special_tokens=False)["input_ids"]) + [self.eos]
        if len(ids) < seq_len:
            raise ValueError(f"the data has {len(ids)} tokens, fewer than --seq-len {seq_len}")
        self.stream = torch.tensor(ids, dtype=torch.int64)

    def batch(self, step: int, batch_size: int, seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ``(input_ids, position_ids)``, both ``(batch_size, seq_len)``."""
        g = step_generator(seed, step)
        starts = torch.randint(0, self.stream.numel() - self.seq_len + 1, (batch_size,),
                               generator=g)
        # (B,) + (L,) -> (B, L) window indices
        idx = starts[:, None] + torch.arange(self.seq_len)[None, :]
        tokens = self.stream[idx]
        return tokens, position_ids_after_eos(tokens, self.eos)


def position_ids_after_eos(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """``(B, L)`` positions counting from each document's first token (the one after an
    EOS, or the window's first)."""
    b, length = tokens.shape
    ar = torch.arange(length).expand(b, length)
    starts = torch.zeros_like(tokens, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = tokens[:, :-1] == eos
    # index of the latest document start at or before t, per row
    last = torch.where(starts, ar, torch.zeros_like(ar)).cummax(dim=1).values
    return ar - last
