"""Training configuration: one dataclass whose fields are the CLI options and TOML keys."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from ..utils.numerics import DTYPES

#: ``--activation-checkpointing`` modes (seqpar.memory.checkpointing.MODES).
AC_MODES = ("none", "full", "selective", "offload")

#: Accepted Python types per field annotation (the annotations are strings here).
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": (float, int), "str": (str,), "bool": (bool,),
    "int | None": (int, type(None)), "str | None": (str, type(None)),
    "str | bool": (str, bool),
    "str | bool | None": (str, bool, type(None)), "float | None": (float, int, type(None)),
}


@dataclass
class TrainConfig:
    """Everything a run needs. ``None`` degrees are filled in by :meth:`resolve`."""

    model: str = "tiny"
    seq_len: int = 512
    batch_size: int = 8
    steps: int = 600
    lr: float = 3e-3
    seed: int = 0
    nproc: int | None = None
    dp: int | None = None
    sp: int | None = None
    tp: int | None = None
    strategy: str = "ring"
    layout: str = "zigzag"
    ulysses: int | None = None
    ring: int | None = None
    dtype: str | None = None
    metrics: str | None = None
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: str | bool = False
    data: str = "passkey"
    documents: bool = True
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    fsdp: bool = True
    activation_checkpointing: str | bool | None = None
    log_every: int = 10
    keep_checkpoints: int = 2
    hf: str | None = None
    save_hf: str | None = None
    vocab_size: int | None = None
    loss_chunk: int = 0
    mlp_chunk: int = 0
    offload_layers: int | None = None
    offload_optimizer: bool = False
    memory: str = "manual"
    force: bool = False
    # Linformer attention (bert-* only; seqpar.parallel.linformer, docs/linformer.md)
    attention: str = "softmax"
    linformer_k: int = 256
    # pipeline parallelism (seqpar.parallel.pipeline) and the layer count it splits
    pp: int = 1
    pp_schedule: str = "1f1b"
    microbatches: int | None = None
    virtual_stages: int = 1
    n_layers: int | None = None
    # speed (issue 17; docs/training.md "Speed")
    compile: bool = False
    fused: str | None = None
    profile_step: int | None = None
    peak_tflops: float | None = None
    fsdp_prefetch: int = 0

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def check_types(cls, values: dict, where: str) -> None:
        """ValueError naming every key whose value has the wrong type (a TOML file can
        hold ``steps = "ten"`` or ``steps = 2.5``; argparse already converted options).
        An int is accepted for a float; a bool is never an int."""
        wanted = {f.name: _TYPES.get(str(f.type)) for f in fields(cls)}
        bad = []
        for key, value in values.items():
            kinds = wanted.get(key)
            if kinds is None:
                continue
            ok = any(isinstance(value, k) for k in kinds) and not (
                isinstance(value, bool) and bool not in kinds)
            if not ok:
                names = " or ".join(k.__name__ for k in kinds if k is not type(None))
                bad.append(f"{key} = {value!r} is {type(value).__name__}, expected {names}")
        if bad:
            raise ValueError(f"{where}: wrong type: " + "; ".join(bad))

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve(self, world_size: int, *, cuda: bool) -> TrainConfig:
        """Fill in unset degrees: ``dp`` and ``tp`` default to 1, ``sp`` takes the rest
        (or dp takes the rest when sp is given). ``dtype``: bf16 on GPUs, fp32 on CPU."""
        cfg = TrainConfig(**self.to_dict())
        if isinstance(cfg.pp, int) and cfg.pp > 1:  # the other degrees share world / pp
            world_size //= cfg.pp
        dp, sp, tp = cfg.dp, cfg.sp, cfg.tp
        tp = tp or 1
        if sp is None:
            dp = dp or 1
            sp = max(1, world_size // (dp * tp))
        elif dp is None:
            dp = max(1, world_size // (sp * tp))
        cfg.dp, cfg.sp, cfg.tp = dp, sp, tp
        if cfg.strategy == "hybrid":
            if cfg.ulysses is None and cfg.ring is None:
                cfg.ulysses = 2 if sp % 2 == 0 and sp > 2 else 1
            if cfg.ring is None:
                cfg.ring = sp // cfg.ulysses if cfg.ulysses else None
            elif cfg.ulysses is None:
                cfg.ulysses = sp // cfg.ring if cfg.ring else None
        if cfg.dtype is None:
            cfg.dtype = "bfloat16" if cuda else "float32"
        if cfg.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {cfg.dtype!r}; choose one of {tuple(DTYPES)}")
        return cfg

    def parallel_dims(self):
        """The :class:`~seqpar.parallel.ParallelDims` of this (resolved) config."""
        from ..parallel import ParallelDims

        return ParallelDims(dp=self.dp, sp=self.sp, tp=self.tp, strategy=self.strategy,
                            layout=self.layout, ulysses=self.ulysses, ring=self.ring,
                            pp=self.pp, pp_schedule=self.pp_schedule,
                            microbatches=self.microbatches, virtual_stages=self.virtual_stages)

    @property
    def checkpointing_mode(self) -> str:
        """``activation_checkpointing`` as a mode: True is "full", False and None (not
        given: ``seqpar train`` lets the planner choose on a GPU) "none"."""
        ac = self.activation_checkpointing
        if ac is None:
            return "none"
        return {True: "full", False: "none"}.get(ac, ac) if isinstance(ac, bool) else ac

    def model_vocab(self, data_vocab: int) -> int:
        """The model's embedding/head size: ``vocab_size`` when given (the data keeps its
        token ids, so it must be at least the data's vocabulary), else the data's."""
        if self.vocab_size is None:
            return data_vocab
        if self.vocab_size < data_vocab:
            raise ValueError(f"--vocab-size {self.vocab_size} is smaller than the data's "
                             f"vocabulary ({data_vocab} token ids for --data {self.data})")
        return self.vocab_size

    def model_overrides(self, data_vocab: int) -> dict:
        """``model_config`` overrides: the vocabulary (:meth:`model_vocab`), ``--n-layers``
        (the named model cut or grown to that depth) and Linformer's fields (its E/F sized
        for ``seq_len``)."""
        out: dict = {"vocab_size": self.model_vocab(data_vocab)}
        if self.n_layers is not None:
            if self.n_layers < 1:
                raise ValueError(f"--n-layers {self.n_layers} must be at least 1")
            out["n_layers"] = self.n_layers
        if self.attention != "softmax":
            out.update(attention=self.attention, linformer_k=self.linformer_k,
                       max_seq_len=self.seq_len)
        return out

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype or "float32"]
