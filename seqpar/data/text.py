"""Real data: user text / JSONL files through the byte tokenizer.

Documents are packed into one token stream separated by ``EOS``; a batch is
``batch_size`` windows of ``seq_len + 1`` tokens at offsets drawn from the
``(seed, step)`` generator, so the data position is the step and resuming
needs no iterator state. Labels are the inputs shifted by one, made here on
the *global* sequence, before any sharding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from .synthetic import step_generator
from .tokenizer import ByteTokenizer


def read_documents(paths: Iterable[str | Path], text_key: str = "text") -> list[str]:
    """Documents from ``.txt`` files (one document each) and ``.jsonl`` files (one per line,
    ``text_key`` field); a directory contributes its ``*.txt``/``*.jsonl`` files, sorted."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl", ".json"))
        elif p.exists():
            files.append(p)
        else:
            raise ValueError(f"data file {str(p)!r} does not exist")
    docs: list[str] = []
    for f in files:
        if f.suffix in (".jsonl", ".json"):
            for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{f}:{lineno}: not JSON ({exc})") from None
                if not isinstance(record, dict) or text_key not in record:
                    raise ValueError(f"{f}:{lineno}: expected an object with a {text_key!r} "
                                     f"field")
                docs.append(str(record[text_key]))
        else:
            docs.append(f.read_text(encoding="utf-8", errors="replace"))
    return docs


class TextDataset:
    """Byte-tokenized documents packed into one stream; random windows per step."""

    arch = "decoder"
    chance = 0.0

    def __init__(self, paths: Iterable[str | Path], seq_len: int, text_key: str = "text"):
        tok = ByteTokenizer()
        self.vocab_size = tok.vocab_size
        self.seq_len = seq_len
        ids: list[int] = []
        for doc in read_documents(paths, text_key):
            ids += tok.encode(doc, eos=True)
        if len(ids) < seq_len + 1:
            raise ValueError(f"the data has {len(ids)} tokens, fewer than seq_len + 1 = "
                             f"{seq_len + 1}")
        self.stream = torch.tensor(ids, dtype=torch.int16)  # bytes and specials fit in int16

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ``(tokens, labels)`` ``(batch_size, seq_len)``; ``labels[t] = tokens[t+1]``.

        A label that crosses into the next document (the token after ``EOS``)
        is kept: predicting ``EOS`` ends a document, and the first token of the
        next one is predicted from the ``EOS`` alone when documents are masked.
        """
        g = step_generator(seed, step)
        starts = torch.randint(0, self.stream.numel() - self.seq_len, (batch_size,), generator=g)
        # (B,) + (L+1,) -> (B, L+1) window indices
        idx = starts[:, None] + torch.arange(self.seq_len + 1)[None, :]
        windows = self.stream[idx].long()
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    @staticmethod
    def cu_seqlens(tokens: torch.Tensor) -> list[torch.Tensor]:
        """Per sequence, global document boundaries ``[0, ..., L]`` of a packed batch:
        a document ends after each ``EOS``. ``tokens (B, L)`` -> B int64 tensors."""
        out = []
        length = tokens.shape[1]
        for row in tokens:
            ends = (row == ByteTokenizer.EOS).nonzero().flatten() + 1  # exclusive ends
            ends = ends[ends < length]
            out.append(torch.cat([torch.zeros(1, dtype=torch.int64), ends,
                                  torch.full((1,), length, dtype=torch.int64)]))
        return out
