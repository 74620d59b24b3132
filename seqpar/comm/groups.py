"""Resolving the ``group`` argument and the device collectives run on."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

#: Default timeout for process groups seqpar creates: long enough for real
#: work, short enough that a mismatch surfaces as an error instead of a hang.
DEFAULT_TIMEOUT = timedelta(minutes=5)


def resolve_group(group: object | None) -> dist.ProcessGroup | None:
    """Turn ``None`` / ``ProcessGroup`` / 1-D ``DeviceMesh`` into a process group.

    Returns ``None`` when torch.distributed is not initialised: a single
    process then behaves as a group of one.
    """
    if group is None:
        return dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
    if isinstance(group, dist.ProcessGroup):
        return group
    # DeviceMesh without importing it eagerly (older builds lack it on some platforms).
    get_group = getattr(group, "get_group", None)
    ndim = getattr(group, "ndim", None)
    if get_group is not None:
        if ndim != 1:
            raise ValueError(
                f"group must be a 1-D DeviceMesh for this strategy, got a {ndim}-D mesh "
                f"with dims {getattr(group, 'mesh_dim_names', None)}"
            )
        return get_group()
    raise ValueError(f"group must be a ProcessGroup, a 1-D DeviceMesh or None, got {type(group)}")


def group_rank_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank within group, group size). ``None`` is the default group, or a group
    of one when torch.distributed is not initialised."""
    if group is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def collective_device(group: dist.ProcessGroup | None) -> torch.device:
    """Device for small control tensors (shape checks) on this group's backend."""
    if group is not None and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_hybrid_mesh(group: object) -> bool:
    """A 2-D DeviceMesh with dims named ``ulysses`` and ``ring``."""
    names = getattr(group, "mesh_dim_names", None) or ()
    return getattr(group, "ndim", None) == 2 and set(names) == {"ulysses", "ring"}


def hybrid_mesh(ulysses: int, ring: int, device_type: str = "cuda",
                timeout: timedelta = DEFAULT_TIMEOUT):
    """The 2-D mesh for ``strategy="hybrid"``: Ulysses innermost (adjacent ranks).

    Built as shape ``(ring, ulysses)`` with dims ``("ring", "ulysses")``, so a
    Ulysses group is ``ulysses`` consecutive ranks (one NVLink island: the
    all-to-all never leaves a node when ``ulysses`` divides the GPUs per node)
    and the ring crosses nodes. Rank ``r·U + u`` sits at ``(r, u)`` and holds
    sequence slice ``r·U + u``, and after the all-to-all ring member ``r`` holds
    the adjacent slices ``r·U .. r·U+U-1`` (one run for contiguous layouts).
    Every sub-group gets ``timeout``.

    A mesh built by hand in the other order (``("ulysses", "ring")``, shape
    ``(U, R)``) is exact too, since slices always follow global rank order
    (:func:`hybrid_slices`), but its all-to-all spans nodes: use this helper.
    """
    from torch.distributed.device_mesh import init_device_mesh

    if ulysses < 1 or ring < 1:
        raise ValueError(f"hybrid_mesh needs ulysses >= 1 and ring >= 1, got {ulysses}, {ring}")
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if ulysses * ring != world:
        raise ValueError(f"hybrid_mesh: ulysses*ring = {ulysses}*{ring} = {ulysses * ring} "
                         f"!= world size {world}")
    mesh = init_device_mesh(device_type, (ring, ulysses), mesh_dim_names=("ring", "ulysses"))
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
    if set_timeout is not None:  # sub-groups otherwise get c10d's default (30 min)
        for name in ("ring", "ulysses"):
            set_timeout(timeout, mesh.get_group(name))
    return mesh


def hybrid_groups(mesh) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """(ulysses group, ring group) of a hybrid mesh."""
    return mesh.get_group("ulysses"), mesh.get_group("ring")


def hybrid_slices(mesh) -> list[list[int]]:
    """``slices[r][u]``: the sequence slice held by the member at ring ``r``, ulysses ``u``.

    The rule, whatever the mesh's dim order: slices follow the members' global
    ranks (the lowest rank holds slice 0). So on a mesh spanning the world, slice =
    global rank and ``seqpar.shard`` with the default group is the hybrid shard;
    on a sub-mesh (e.g. one dp replica of ``ParallelDims``) it is the rank's place
    among the mesh's ranks. For :func:`hybrid_mesh` that is ``r·U + u``.
    """
    names = tuple(mesh.mesh_dim_names)
    # (U, R) or (R, U) global ranks -> (R, U)
    ranks = mesh.mesh if names == ("ring", "ulysses") else mesh.mesh.transpose(0, 1)
    order = sorted(ranks.flatten().tolist())
    return [[order.index(g) for g in row] for row in ranks.tolist()]


def seq_rank_size(group: object | None) -> tuple[int, int]:
    """Which slice of the sequence this rank holds, and how many slices there are.

    For a 1-D group that is its rank; for a hybrid mesh see :func:`hybrid_slices`
    (for :func:`hybrid_mesh`: rank ``(r, u)`` holds slice ``r·U + u``, so that after
    the Ulysses all-to-all a ring member holds one run of adjacent slices).
    """
    if is_hybrid_mesh(group):
        ug, rg = hybrid_groups(group)
        (u, size_u), (r, size_r) = group_rank_size(ug), group_rank_size(rg)
        return hybrid_slices(group)[r][u], size_u * size_r
    return group_rank_size(resolve_group(group))
