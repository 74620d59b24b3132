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


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of data (``dp``), sequence (``sp``) and tensor (``tp``) parallelism.

    ``strategy``/``layout`` say how attention runs over the sp group. For
    ``strategy="hybrid"`` ``ulysses`` x ``ring`` must equal ``sp`` (all-to-all
    over ``ulysses`` ranks, ring over ``ring`` ranks). Mesh order is ``("dp", "sp", "tp")``: tp
    innermost, so a tp group is the closest ranks (one NVLink island).
    """

    dp: int = 1
    sp: int = 1
    tp: int = 1
    strategy: str = "ring"
    layout: str = "contiguous"
    ulysses: int | None = None
    ring: int | None = None

    @property
    def world_size(self) -> int:
        return self.dp * self.sp * self.tp

    def describe(self) -> str:
        extra = f", ulysses={self.ulysses}, ring={self.ring}" if self.strategy == "hybrid" else ""
        return (f"dp={self.dp}, sp={self.sp}, tp={self.tp}, strategy={self.strategy!r}, "
                f"layout={self.layout!r}{extra}")

    def problems(self, world_size: int | None = None, *, n_heads: int | None = None,
                 n_kv_heads: int | None = None, ffn_dim: int | None = None,
                 seq_len: int | None = None, batch_size: int | None = None) -> list[str]:
        """Every reason this configuration cannot run (empty when it can)."""
        out = []
        for name in ("dp", "sp", "tp"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                out.append(f"{name}={v!r} must be a positive integer")
        if out:
            return out
        if world_size is not None and self.world_size != world_size:
            out.append(f"dp*sp*tp = {self.dp}*{self.sp}*{self.tp} = {self.world_size} "
                       f"!= world size {world_size}")
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
        ``n_heads``, ``n_kv_heads``, ``ffn_dim``). Returns ``self``.
        """
        found = self.problems(world_size, n_heads=getattr(model, "n_heads", None),
                              n_kv_heads=getattr(model, "n_kv_heads", None),
                              ffn_dim=getattr(model, "ffn_dim", None), seq_len=seq_len,
                              batch_size=batch_size)
        if found:
            ws = f", world_size={world_size}" if world_size is not None else ""
            raise ValueError(f"invalid parallel configuration ({self.describe()}{ws}): "
                             + "; ".join(found))
        return self

    def build_mesh(self, device_type: str = "cpu", timeout: timedelta = DEFAULT_TIMEOUT):
        """The world's ``DeviceMesh`` with dims ``("dp", "sp", "tp")``, plus the
        flattened ``"dp_sp"`` (the FSDP / gradient-reduction dim).

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
            mesh = init_device_mesh(device_type, (self.dp, self.ring, self.ulysses, self.tp),
                                    mesh_dim_names=("dp", "ring", "ulysses", "tp"))
            subs = [mesh[n] for n in ("dp", "ring", "ulysses", "tp")]
            subs.append(mesh["ring", "ulysses"]._flatten("sp"))
            subs.append(mesh["dp", "ring", "ulysses"]._flatten("dp_sp"))
        else:
            mesh = init_device_mesh(device_type, (self.dp, self.sp, self.tp),
                                    mesh_dim_names=("dp", "sp", "tp"))
            subs = [mesh[n] for n in ("dp", "sp", "tp")]
            subs.append(mesh["dp", "sp"]._flatten("dp_sp"))
        set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
        if set_timeout is not None:  # sub-groups otherwise get c10d's default (30 min)
            for sub in subs:
                set_timeout(timeout, sub.get_group())
        return mesh
