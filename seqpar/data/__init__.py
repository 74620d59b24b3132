"""Data: synthetic long-range tasks, a byte tokenizer over user files, per-rank sharding."""

from __future__ import annotations

from .pipeline import LocalBatch, shard_batch
from .synthetic import IGNORE_INDEX, KVRetrieval, Passkey, step_generator
from .text import TextDataset, read_documents
from .tokenizer import ByteTokenizer

TASKS = ("passkey", "kv")


def make_dataset(data: str, seq_len: int, arch: str = "decoder"):
    """``"passkey"`` / ``"kv"`` (synthetic) or a comma-separated list of text/JSONL paths."""
    if data == "passkey":
        return Passkey(seq_len, arch=arch)
    if data == "kv":
        return KVRetrieval(seq_len, arch=arch)
    if arch != "decoder":
        raise ValueError("text data trains decoders only; use --data passkey|kv for encoders")
    return TextDataset([p for p in data.split(",") if p], seq_len)


__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "ByteTokenizer",
    "KVRetrieval",
    "LocalBatch",
    "Passkey",
    "TextDataset",
    "make_dataset",
    "read_documents",
    "shard_batch",
    "step_generator",
]
