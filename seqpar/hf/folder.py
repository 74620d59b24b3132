"""Checks on an HF model folder, all local: run them before any process group work.

A training command given ``--hf PATH`` should fail in the first second with a
message naming the missing file or the mismatch, not after spawning ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

from .families import check_supported

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(path: str | Path, *, need_tokenizer: bool = True):
    """The folder's config after checking: ``config.json``, the safetensors it names
    (an index's shards must all exist), a supported family and, with
    ``need_tokenizer``, tokenizer files. Raises ``ValueError`` naming the problem."""
    from transformers import AutoConfig

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--hf {folder}: not a directory")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: config.json is missing")
    config = AutoConfig.from_pretrained(folder)
    check_supported(config)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ValueError(f"{folder}: the index names {len(shards)} safetensors files, "
                             f"missing: {missing}")
    elif not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder}: no model.safetensors or model.safetensors.index.json "
                         "(only safetensors weights are read)")
    if need_tokenizer and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"{folder}: no tokenizer (none of {_TOKENIZER_FILES})")
    return config


def check_tokenizer(tokenizer, config) -> None:
    """The tokenizer's ids must fit the model's embedding: ``ValueError`` with both sizes."""
    n = len(tokenizer)
    if n > config.vocab_size:
        raise ValueError(f"the tokenizer has {n} tokens but the model's vocab_size is "
                         f"{config.vocab_size}: ids >= {config.vocab_size} have no embedding")
