"""Which checkpoint ``--resume`` loads, decided from the filesystem before any
process group exists, and said out loud.

A checkpoint folder ``step-N`` is complete once its DCP ``.metadata`` is
written and readable (saves are atomic: see ``checkpoint.py``). Rules:

* ``--resume`` / ``latest`` with ``--checkpoint-dir D``: the newest of the
  checkpoint ``D/latest`` names and the ``step-*`` folders in ``D``. No
  checkpoint yet: start at step 0 (a preemptible job can always pass
  ``--resume``). If that newest one is unreadable, it is an error: training
  would start over and write over it. Resuming from an older one takes an
  explicit ``--resume D/step-M``.
* ``--resume D`` (a folder of checkpoints): the same, but an empty folder is
  an error.
* ``--resume D/step-M``: that checkpoint, which must be readable.

``.tmp-*`` folders (interrupted saves) never count; each is reported as skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "step-"


@dataclass
class ResumePoint:
    """The checkpoint to load (``None``: start fresh) and what was decided, in words."""

    path: Path | None = None
    notes: list[str] = field(default_factory=list)


def problem(path: Path) -> str | None:
    """Why ``path`` cannot be loaded as a checkpoint, or ``None`` if it can."""
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is not a folder"
    if not (path / ".metadata").is_file():
        return "it has no .metadata (an incomplete or damaged save)"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        FileSystemReader(str(path)).read_metadata()
    except Exception as exc:  # noqa: BLE001 - any failure means unreadable
        return f"its .metadata cannot be read ({type(exc).__name__}: {exc})"
    return None


def _step_of(path: Path) -> int:
    try:
        return int(path.name[len(PREFIX):])
    except ValueError:
        return -1


def _from_folder(folder: Path, *, fresh_ok: bool, option: str) -> ResumePoint:
    notes = [f"skipping {tmp}: an interrupted save" for tmp in sorted(folder.glob(".tmp-*"))]
    found = {p for p in folder.glob(f"{PREFIX}*") if p.is_dir()}
    pointer = folder / "latest"
    named = None
    if pointer.is_file():
        named = folder / pointer.read_text().strip()
        found.add(named)
    if not found:
        if fresh_ok:
            return ResumePoint(None, notes + [f"no checkpoint in {folder} yet: starting at "
                                              "step 0"])
        raise ValueError(f"{option}: no checkpoint in {folder}")
    newest = max(found, key=lambda p: (_step_of(p), p.name))
    why = problem(newest)
    if why is not None:
        older = sorted((p for p in found if p != newest and problem(p) is None),
                       key=_step_of)
        hint = (f"resume from an older one explicitly (--resume {older[-1]}), or move "
                f"{newest.name} away" if older else
                f"no older readable checkpoint there; move {newest.name} away to start over")
        by = f" (named by {pointer})" if newest == named else ""
        raise ValueError(f"{option}: the newest checkpoint {newest}{by} is unreadable: {why}. "
                         f"Not training, since that would write over it; {hint}.")
    if named is not None and named != newest:
        notes.append(f"{pointer} names {named.name}, but {newest.name} is newer and complete")
    notes.append(f"resuming from {newest} (the newest of {len(found)} in {folder})")
    return ResumePoint(newest, notes)


def resolve_resume(resume: str | bool | None, ckpt_dir: str | None) -> ResumePoint:
    """Decide what ``--resume`` loads (see the module doc); ``ValueError`` if it cannot."""
    if resume is False or resume in ("", "false", "False", None):
        return ResumePoint()
    if resume is True or resume in ("latest", "true", "True"):
        if not ckpt_dir:
            raise ValueError("--resume needs --checkpoint-dir (or a checkpoint path)")
        return _from_folder(Path(ckpt_dir), fresh_ok=True, option="--resume")
    path = Path(str(resume))
    if path.name.startswith(PREFIX) or (path / ".metadata").exists():
        why = problem(path)
        if why is not None:
            raise ValueError(f"--resume {path}: cannot load this checkpoint: {why}")
        newer = sorted((p for p in path.parent.glob(f"{PREFIX}*")
                        if p.is_dir() and _step_of(p) > _step_of(path)), key=_step_of)
        notes = [f"skipping newer {p}: "
                 + (problem(p) or "readable, but an older checkpoint was asked for")
                 + "; this run's saves of the same steps replace it" for p in newer]
        return ResumePoint(path, notes + [f"resuming from {path} (given explicitly)"])
    if not path.is_dir():
        raise ValueError(f"--resume {path}: no such checkpoint or folder")
    return _from_folder(path, fresh_ok=False, option=f"--resume {path}")
