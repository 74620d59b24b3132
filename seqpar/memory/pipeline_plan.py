"""What one pipeline rank holds, for the memory planner (``pp > 1``).

The planner (:mod:`seqpar.memory.planner`) estimates a *part* of the model: the
layers a rank holds, the parameters beside them, whether the loss runs there, and
how many microbatches' stored activations are alive at once. Without pipelining
the part is the whole model with one "microbatch" (the rank's whole batch). With
``pp`` stages (simple and conservative, DESIGN: correctness of the bound over
tightness):

* a rank holds ``n_layers / pp`` layers (``virtual_stages`` chunks of
  ``n_layers / (pp * virtual_stages)`` with the interleaved schedule); the first
  rank also the embedding ``(V, d)``, the last the final norm and the head (a tied
  head is a copy of the embedding there, as in :mod:`seqpar.parallel.pipeline_stages`);
* FSDP2 shards the rank's parameters over the ranks of its stage that split the
  tokens (the planner's ``gpus``: sp x tp);
* stored activations: one microbatch is ``1 / microbatches`` of the rank's tokens.
  GPipe runs every forward before any backward: all ``microbatches`` are alive on
  every rank. 1F1B: rank ``r`` starts ``pp - r`` forwards before its first backward,
  so ``min(microbatches, pp - r)`` (the first rank holds the most). Interleaved 1F1B
  (torch's ``ScheduleInterleaved1F1B`` warm-up, ``_get_warmup_ops``):
  ``(v - 1) R + 2 (pp - 1 - r) + 1`` chunks of ``n_layers / (pp v)`` layers, at most
  ``microbatches x v`` (``R = m // max(1, m // pp)``, ``pp`` when ``pp`` divides ``m``);
* the stage boundary: one ``(mb, n, d)`` activation (or its gradient) per in-flight
  microbatch in the schedule's buffers;
* under FSDP2 the schedule leaves the stage's parameters unsharded (compute dtype)
  and accumulates unsharded fp32 gradients until the last microbatch's backward
  (``torch.distributed.pipelining`` turns resharding and gradient reduction off for
  the others): ``(b + 4) P_stage`` instead of one or two blocks' worth.

The first and the last rank are estimated; the larger peak is the plan (a middle
rank holds no more layers than they do and fewer microbatches than the first).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models import ModelConfig

SCHEDULES = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True)
class PipelineShape:
    """The pipeline of a run: degree, microbatches per dp rank, schedule."""

    pp: int = 1
    microbatches: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1

    def validate(self, n_layers: int) -> None:
        bad = []
        if self.pp < 1 or self.microbatches < 1 or self.virtual_stages < 1:
            bad.append(f"pp={self.pp}, microbatches={self.microbatches} and "
                       f"virtual_stages={self.virtual_stages} must be at least 1")
        if self.schedule not in SCHEDULES:
            bad.append(f"pp_schedule={self.schedule!r}: choose one of {SCHEDULES}")
        elif (self.schedule == "interleaved") != (self.virtual_stages > 1):
            bad.append(f"pp_schedule={self.schedule!r} with virtual_stages="
                       f"{self.virtual_stages} (interleaved needs >= 2, the others 1)")
        stages = self.pp * self.virtual_stages
        if stages >= 1 and n_layers % stages:
            bad.append(f"n_layers={n_layers} cannot be split evenly into pp*virtual_stages = "
                       f"{self.pp}*{self.virtual_stages} = {stages} stages")
        if bad:
            raise ValueError("plan: " + "; ".join(bad))


@dataclass(frozen=True)
class StagePart:
    """The part of the model one rank holds (global layer indices)."""

    layers: tuple[int, ...]
    in_flight: int  # chunks of ``chunk_layers`` layers with stored activations at once
    chunk_layers: int
    microbatches: int  # the rank's tokens are split into this many microbatches
    root_params: int  # parameters outside the blocks (embedding, norm, head)
    loss: bool  # the head and the loss run here
    gpus_on_host: int  # ranks sharing the host's memory


def in_flight(shape: PipelineShape, rank: int) -> int:
    """Microbatch chunks whose stored activations pp rank ``rank`` holds at its peak."""
    m, pp, v = shape.microbatches, shape.pp, shape.virtual_stages
    if shape.schedule == "gpipe":
        return m
    if shape.schedule == "1f1b":
        return min(m, pp - rank)
    per_round = m // max(1, m // pp)  # torch's microbatches_per_round
    return min(m * v, (v - 1) * per_round + 2 * (pp - 1 - rank) + 1)


def rank_layers(n_layers: int, shape: PipelineShape, rank: int) -> tuple[int, ...]:
    """The global layer indices of pp rank ``rank``: stages ``rank + k pp``."""
    per = n_layers // (shape.pp * shape.virtual_stages)
    return tuple(i for k in range(shape.virtual_stages)
                 for i in range((rank + k * shape.pp) * per, (rank + k * shape.pp + 1) * per))


def pipeline_parts(cfg: ModelConfig, shape: PipelineShape, gpus: int) -> list[StagePart]:
    """The first and the last pp rank's parts (the planner takes the larger peak);
    ``gpus`` ranks per stage, all ``gpus x pp`` on one host (host memory)."""
    shape.validate(cfg.n_layers)
    emb = cfg.vocab_size * cfg.dim
    chunk = cfg.n_layers // (shape.pp * shape.virtual_stages)
    # first rank: the embedding; last: the final norm and the head (a tied head's copy)
    roots = {0: (emb, False), shape.pp - 1: (cfg.dim + emb, True)}
    return [StagePart(layers=rank_layers(cfg.n_layers, shape, r), in_flight=in_flight(shape, r),
                      chunk_layers=chunk, microbatches=shape.microbatches, root_params=root,
                      loss=loss, gpus_on_host=gpus * shape.pp) for r, (root, loss) in roots.items()]


__all__ = ["PipelineShape", "SCHEDULES", "StagePart", "in_flight", "pipeline_parts",
           "rank_layers"]
