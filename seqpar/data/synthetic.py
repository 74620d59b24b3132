"""Synthetic long-range tasks, generated on the fly: passkey and key-value retrieval.

``Passkey`` (the default, learnable by ``tiny`` in minutes): one passkey per
slot (slot ``s`` draws its value from its own id range), each written a few
times at random positions in the first half of a repeated filler text, and at
the very end a query token per slot followed by the answer. The answer is only
in the passkey tokens, on average ``~3L/4`` positions back.

``KVRetrieval`` (multi-query associative recall, harder: needs an induction
circuit): a sequence is ``BOS, k1 v1 k2 v2 ... kn vn, <noise ...>, q1 a1 ... qm am``:
``n`` key-value pairs at the very start, random filler, then ``m`` queries at
the very end, each a key seen at the start followed by its value. The loss and
the accuracy count only the answer tokens ``a_j``; a model can predict them
only by attending back across (almost) the whole sequence, so under sequence
parallelism the answer depends on tokens that live on other ranks. Chance
accuracy is ``1 / n_values`` for both.

Batches are a pure function of ``(seed, step)``: the data position in a
checkpoint is just the step, and every rank generates the same global batch
before taking its shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokenizer import ByteTokenizer

IGNORE_INDEX = -100


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one step's batch, independent of any other step."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1))


@dataclass(frozen=True)
class KVRetrieval:
    """Key-value retrieval; ``arch="encoder"`` masks the answers instead (BERT-style MLM).

    Token ids reuse the byte vocabulary: keys ``[0, n_keys)``, values
    ``[64, 64 + n_values)``, filler ``[128, 256)``.
    """

    seq_len: int
    n_pairs: int = 16
    n_queries: int = 16
    n_keys: int = 64
    n_values: int = 64
    arch: str = "decoder"
    vocab_size: int = ByteTokenizer.vocab_size

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.n_keys <= 64 or not 0 < self.n_values <= 64:
            problems.append(f"n_keys={self.n_keys} and n_values={self.n_values} must be in [1, 64]")
        if self.n_pairs > self.n_keys:
            problems.append(f"n_pairs={self.n_pairs} > n_keys={self.n_keys} (keys are distinct)")
        if not 0 < self.n_queries <= self.n_pairs:
            problems.append(f"n_queries={self.n_queries} must be in [1, n_pairs={self.n_pairs}]")
        if self.seq_len < 1 + 2 * (self.n_pairs + self.n_queries):
            problems.append(f"seq_len={self.seq_len} too short for {self.n_pairs} pairs and "
                            f"{self.n_queries} queries (needs >= "
                            f"{1 + 2 * (self.n_pairs + self.n_queries)})")
        if problems:
            raise ValueError("KVRetrieval: " + "; ".join(problems))

    @property
    def chance(self) -> float:
        return 1.0 / self.n_values

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ``(tokens, labels)``, each ``(batch_size, seq_len)`` int64.

        Labels are already aligned with the inputs (shifted for the decoder), so
        sharding both the same way loses no label at a shard border.
        """
        g = step_generator(seed, step)
        b, length, n, m = batch_size, self.seq_len, self.n_pairs, self.n_queries
        tokens = torch.randint(128, 256, (b, length), generator=g)  # filler
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.int64)
        # (B, n_keys) random permutations -> first n distinct keys per sequence
        keys = torch.argsort(torch.rand(b, self.n_keys, generator=g), dim=1)[:, :n]
        values = 64 + torch.randint(0, self.n_values, (b, n), generator=g)
        tokens[:, 0] = ByteTokenizer.BOS
        tokens[:, 1:1 + 2 * n:2] = keys
        tokens[:, 2:2 + 2 * n:2] = values
        # which pairs are asked, in random order: (B, m) indices into the n pairs
        asked = torch.argsort(torch.rand(b, n, generator=g), dim=1)[:, :m]
        q_keys, answers = keys.gather(1, asked), values.gather(1, asked)
        start = length - 2 * m
        tokens[:, start::2] = q_keys
        if self.arch == "encoder":
            tokens[:, start + 1::2] = ByteTokenizer.MASK
            labels[:, start + 1::2] = answers
        else:
            tokens[:, start + 1::2] = answers
            labels[:, start::2] = answers  # predicted at the query key, before the answer
        return tokens, labels


FILLER = (b"The grass is green. The sky is blue. The sun is yellow. Here we go. "
          b"There and back again. ")


@dataclass(frozen=True)
class Passkey:
    """Passkey retrieval (Mohtashami & Jaggi 2023 style); ``arch="encoder"`` masks the
    answers instead (BERT-style MLM).

    The haystack is the classic repeated filler sentence (as bytes, at a random
    phase); each slot's passkey is written ``repeats`` times at random places in
    the first half (default ``seq_len // 64``: a fixed density; a single copy
    in a long haystack leaves a small model on a loss plateau for longer than a
    CPU demo lasts). Token ids reuse the byte vocabulary: the passkey of slot
    ``s`` with value ``v`` is ``128 + s * n_values + v``, the query for slot
    ``s`` is the control byte ``s + 1`` (neither occurs in the filler).
    """

    seq_len: int
    n_slots: int = 8
    n_values: int = 16
    repeats: int | None = None
    arch: str = "decoder"
    vocab_size: int = ByteTokenizer.vocab_size

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.n_slots <= 30 or self.n_values < 1 \
                or self.n_slots * self.n_values > 128:
            problems.append(f"n_slots * n_values = {self.n_slots} * {self.n_values} must be "
                            f"in [1, 128] with n_slots <= 30")
        if self.copies < 1:
            problems.append(f"repeats={self.repeats} must be >= 1")
        if self.seq_len // 2 - 1 < self.n_slots * self.copies \
                or self.seq_len < 4 * self.n_slots + 2:
            problems.append(f"seq_len={self.seq_len} too short for {self.n_slots} passkeys x "
                            f"{self.copies} (needs >= "
                            f"{max(4 * self.n_slots + 2, 2 * self.n_slots * self.copies + 3)})")
        if problems:
            raise ValueError("Passkey: " + "; ".join(problems))

    @property
    def chance(self) -> float:
        return 1.0 / self.n_values

    @property
    def copies(self) -> int:
        """How many times each passkey is written."""
        return self.repeats if self.repeats is not None else max(1, self.seq_len // 64)

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global ``(tokens, labels)``, each ``(batch_size, seq_len)`` int64, labels aligned."""
        g = step_generator(seed, step)
        b, length, s, nv, r = batch_size, self.seq_len, self.n_slots, self.n_values, self.copies
        filler = torch.tensor(list(FILLER), dtype=torch.int64)
        phase = torch.randint(0, len(filler), (b, 1), generator=g)
        # (B, 1) + (L,) -> (B, L): the filler sentence from a random phase, repeated
        tokens = filler[(phase + torch.arange(length)[None, :]) % len(filler)]
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.int64)
        tokens[:, 0] = ByteTokenizer.BOS
        values = torch.randint(0, nv, (b, s), generator=g)  # (B, S)
        keys = 128 + torch.arange(s) * nv + values  # (B, S) passkey token per slot
        # S*R distinct positions in [1, L/2): (B, S*R), slot-major
        where = 1 + torch.argsort(torch.rand(b, length // 2 - 1, generator=g), dim=1)[:, :s * r]
        # (B, S) -> (B, S, R) -> (B, S*R): each passkey written R times
        tokens.scatter_(1, where, keys[:, :, None].expand(b, s, r).reshape(b, s * r))
        order = torch.argsort(torch.rand(b, s, generator=g), dim=1)  # slots asked, (B, S)
        answers = keys.gather(1, order)
        start = length - 2 * s
        tokens[:, start::2] = 1 + order
        if self.arch == "encoder":
            tokens[:, start + 1::2] = ByteTokenizer.MASK
            labels[:, start + 1::2] = answers
        else:
            tokens[:, start + 1::2] = answers
            labels[:, start::2] = answers
        return tokens, labels
