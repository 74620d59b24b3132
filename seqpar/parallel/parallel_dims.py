"""One validated dataclass of parallel degrees, and the named DeviceMesh it builds.

Everything that can be known before a process group exists is checked here,
so a bad configuration is a ``ValueError`` that lists every degree, raised on
every rank (or in the launcher) before any collective could hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from ..attention import STRATEGIES
from ..comm.groups import DEFAULT_TIMEOUT
from ..layout import get_layout

#: Pipeline schedules (torch.distributed.pipelining): ``gpipe`` (all forwards, then all
#: backwards), ``1f1b`` (one forward one backward: fewer live activations) and
#: ``interleaved`` (1F1B over ``virtual_stages`` stages per rank: a smaller bubble).
PP_SCHEDULES = ("gpipe", "1f1b", "interleaved")


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of pipeline (``pp``), data (``dp``), sequence (``sp``) and tensor (``tp``)
    parallelism.

    ``strategy``/``layout`` say how attention runs over the sp group. For
    ``strategy="hybrid"`` ``ulysses`` x ``ring`` must equal ``sp`` (all-to-all
    over ``ulysses`` ranks, ring over ``ring`` ranks). Mesh order is ``("pp", "dp", "sp", "tp")``:
    tp innermost, so a tp group is the closest ranks (one NVLink island), pp outermost (its
    point-to-point traffic is the smallest, so it may cross nodes).

    ``pp > 1``: the layers are cut into ``pp * virtual_stages`` pipeline stages, run by the
    ``pp_schedule`` over ``microbatches`` microbatches of each dp rank's batch
    (``microbatches=None``: ``pp``).
    """

    dp: int = 1
    sp: int = 1
    tp: int = 1
    strategy: str = "ring"
    layout: str = "contiguous"
    ulysses: int | None = None
    ring: int | None = None
    pp: int = 1
    pp_schedule: str = "1f1b"
    microbatches: int | None = None
    virtual_stages: int = 1

    @property
    def world_size(self) -> int:
        return self.pp * self.dp * self.sp * self.tp

    @property
    def n_microbatches(self) -> int:
        return self.pp if self.microbatches is None else self.microbatches

    @property
    def n_stages(self) -> int:
        """Pipeline stages in all (``pp * virtual_stages``)."""
        return self.pp * self.virtual_stages

    def describe(self) -> str:
        extra = f", ulysses={self.ulysses}, ring={self.ring}" if self.strategy == "hybrid" else ""
        pipe = (f"pp={self.pp} ({self.pp_schedule}, {self.n_microbatches} microbatches"
                + (f", {self.virtual_stages} virtual stages" if self.virtual_stages > 1 else "")
                + "), ") if self.pp > 1 else ""
        return (f"{pipe}dp={self.dp}, sp={self.sp}, tp={self.tp}, strategy={self.strategy!r}, "
                f"layout={self.layout!r}{extra}")

    def pipeline_problems(self, *, n_layers: int | None = None,
                          batch_size: int | None = None) -> list[str]:
        """Every reason the pipeline part of this configuration cannot run."""
        out = []
        for name in ("pp", "virtual_stages", "microbatches"):
            v = getattr(self, name)
            if v is None and name == "microbatches":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                out.append(f"{name}={v!r} must be a positive integer")
        if out:
            return out
        m, v, pp = self.n_microbatches, self.virtual_stages, self.pp
        if self.pp_schedule not in PP_SCHEDULES:
            out.append(f"unknown pp_schedule {self.pp_schedule!r}; choose one of {PP_SCHEDULES}")
        elif self.pp_schedule == "interleaved":
            if pp > 1 and v < 2:
                out.append(f"pp_schedule='interleaved' needs virtual_stages >= 2, got {v}")
            if pp > 1 and m % pp:
                out.append(f"pp_schedule='interleaved' needs microbatches divisible by "
                           f"pp={pp}, got {m}")
        elif v != 1:
            out.append(f"virtual_stages={v} needs pp_schedule='interleaved' "
                       f"(got {self.pp_schedule!r})")
        if pp == 1 and v > 1:
            out.append(f"virtual_stages={v} needs pp > 1")
        if self.pp_schedule == "1f1b" and pp > 1 and m < pp:
            out.append(f"pp_schedule='1f1b' needs microbatches >= pp={pp}, got {m}")
        if n_layers is not None and pp > 1 and (n_layers % self.n_stages or
                                                n_layers < self.n_stages):
            out.append(f"n_layers={n_layers} cannot be split evenly into pp*virtual_stages = "
                       f"{pp}*{v} = {self.n_stages} stages")
        if batch_size is not None and pp > 1 and batch_size % (self.dp * m):
            out.append(f"batch_size={batch_size} (global) is not divisible by "
                       f"dp*microbatches = {self.dp}*{m} = {self.dp * m}")
        return out

    def problems(self, world_size: int | None = None, *, n_heads: int | None = None,
                 n_kv_heads: int | None = None, ffn_dim: int | None = None,
                 seq_len: int | None = None, batch_size: int | None = None,
                 n_layers: int | None = None) -> list[str]:
        """Every reason this configuration cannot run (empty when it can)."""
        out = []
        for name in ("dp", "sp", "tp"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                out.append(f"{name}={v!r} must be a positive integer")
        pipeline = self.pipeline_problems(n_layers=n_layers, batch_size=batch_size)
        if out or any("positive integer" in p for p in pipeline):
            return out + pipeline
        out += pipeline
        if world_size is not None and self.world_size != world_size:
            out.append(f"pp*dp*sp*tp = {self.pp}*{self.dp}*{self.sp}*{self.tp} = "
                       f"{self.world_size} != world size {world_size}")
        if self.strategy not in STRATEGIES:
            out.append(f"unknown strategy {self.strategy!r}; this build has {STRATEGIES}")
        elif self.strategy == "hybrid":
            u, r = self.ulysses, self.ring
            if u is None or r is None or u * r != self.sp:
                out.append(f"strategy='hybrid' needs ulysses*ring == sp, got ulysses={u}, "
                           f"ring={r}, sp={self.sp}")
        try:  # a built-in name, or a user Layout by import path ("module:Class")
            layout = get_layout(self.layout)
        except ValueError as exc:
            layout = None
            out.append(str(exc))
        for name, v in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads), ("ffn_dim", ffn_dim)):
            if v is not None and v % self.tp:
                out.append(f"{name}={v} is not divisible by tp={self.tp}")
        # Ulysses splits the query heads, unevenly if need be (7 on 2 ranks: 4 + 3; kv
        # heads are replicated when there are fewer); a rank without a head cannot work
        heads_split = {"ulysses": self.sp, "hybrid": self.ulysses}.get(self.strategy)
        if heads_split and n_heads is not None and n_heads % self.tp == 0 \
                and n_heads // self.tp < heads_split:
            out.append(f"strategy={self.strategy!r} splits heads {heads_split} ways: "
                       f"n_heads/tp = {n_heads}/{self.tp} = {n_heads // self.tp} heads are "
                       f"fewer than {heads_split} ranks; use 'ring' or 'hybrid' with a "
                       f"smaller ulysses")
        if seq_len is not None and layout is not None:
            granule = layout.granule(self.sp)
            if seq_len % granule:
                out.append(f"layout={self.layout!r} with sp={self.sp} needs seq_len divisible "
                           f"by {granule}, got {seq_len}")
            elif (seq_len // self.sp) % self.tp:
                out.append(f"TP sequence parallelism needs seq_len/sp = {seq_len // self.sp} "
                           f"divisible by tp={self.tp}")
        if batch_size is not None and batch_size % self.dp:
            out.append(f"batch_size={batch_size} (global) is not divisible by dp={self.dp}")
        return out

    def validate(self, world_size: int | None = None, *, model=None, seq_len: int | None = None,
                 batch_size: int | None = None) -> ParallelDims:
        """Raise ``ValueError`` naming every degree if the configuration cannot run.

        ``model`` is a :class:`~seqpar.models.ModelConfig` (or anything with
        ``n_heads``, ``n_kv_heads``, ``ffn_dim``, ``n_layers``). Returns ``self``.
        """
        found = self.problems(world_size, n_heads=getattr(model, "n_heads", None),
                              n_kv_heads=getattr(model, "n_kv_heads", None),
                              ffn_dim=getattr(model, "ffn_dim", None), seq_len=seq_len,
                              batch_size=batch_size, n_layers=getattr(model, "n_layers", None))
        if found:
            ws = f", world_size={world_size}" if world_size is not None else ""
            raise ValueError(f"invalid parallel configuration ({self.describe()}{ws}): "
                             + "; ".join(found))
        return self

    def build_mesh(self, device_type: str = "cpu", timeout: timedelta = DEFAULT_TIMEOUT):
        """The world's ``DeviceMesh`` with dims ``("pp", "dp", "sp", "tp")``, plus the
        flattened ``"dp_sp"`` (the FSDP / gradient-reduction dim) and ``"dp_sp_tp"``
        (every rank of one pipeline stage: the loss and replicated-gradient group).

        For ``hybrid`` the sp dim is itself ``("ring", "ulysses")``, Ulysses
        innermost as in ``seqpar.hybrid_mesh`` (a Ulysses group is adjacent ranks,
        one node): the mesh is built 4-D and the two are flattened into ``"sp"``,
        ring-major, so that sp rank ``r * U + u`` is the sequence slice the hybrid
        attention assigns to mesh coordinate ``(r, u)`` (slices follow the members'
        global rank order, ``seqpar.comm.hybrid_slices``). Every group gets
        ``timeout``, so a rank that stops answering is an error within that time,
        not a hang.
        """
        from torch.distributed.device_mesh import init_device_mesh

        if self.strategy == "hybrid":
            mesh = init_device_mesh(device_type,
                                    (self.pp, self.dp, self.ring, self.ulysses, self.tp),
                                    mesh_dim_names=("pp", "dp", "ring", "ulysses", "tp"))
            subs = [mesh[n] for n in ("pp", "dp", "ring", "ulysses", "tp")]
            subs.append(mesh["ring", "ulysses"]._flatten("sp"))
            subs.append(mesh["dp", "ring", "ulysses"]._flatten("dp_sp"))
            subs.append(mesh["dp", "ring", "ulysses", "tp"]._flatten("dp_sp_tp"))
        else:
            mesh = init_device_mesh(device_type, (self.pp, self.dp, self.sp, self.tp),
                                    mesh_dim_names=("pp", "dp", "sp", "tp"))
            subs = [mesh[n] for n in ("pp", "dp", "sp", "tp")]
            subs.append(mesh["dp", "sp"]._flatten("dp_sp"))
            subs.append(mesh["dp", "sp", "tp"]._flatten("dp_sp_tp"))
        set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
        if set_timeout is not None:  # sub-groups otherwise get c10d's default (30 min)
            for sub in subs:
                set_timeout(timeout, sub.get_group())
        return mesh
