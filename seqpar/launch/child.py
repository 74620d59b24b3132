"""The spawned rank's side of :func:`seqpar.launch.spawn`.

Each rank is a fresh ``python -c BOOT child.py RUN_DIR RANK`` (in its own session, so a
terminal's Ctrl-C reaches only the launcher, which passes it on exactly once).
It takes the parent's ``sys.path``, unpickles ``(fn, args)`` from
``RUN_DIR/payload.pkl`` and runs ``fn(*args)``; the environment (``RANK``,
``WORLD_SIZE``, ``MASTER_*``, ``OMP_NUM_THREADS``) was set by the launcher.

A failure is not printed: its traceback goes to ``RUN_DIR/rank-R.log`` and a
one-line summary with the time to ``RUN_DIR/rank-R.json``, so the launcher can
print one line naming the first failing rank instead of one traceback per rank.
Signals are left alone: whatever handler ``fn`` installs gets them; without one,
SIGINT ends the rank quietly with 130 (even if the launcher was started with
SIGINT ignored) and SIGTERM with the default action.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
import time
import traceback
from pathlib import Path

#: What the launcher runs in each rank's interpreter (argv: THIS_FILE RUN_DIR RANK). It
#: loads this file by path, without the ``seqpar`` package (and torch): a rank function
#: that needs neither starts in a fraction of a second.
BOOT = ("import importlib.util as u, sys; "
        "s = u.spec_from_file_location('seqpar_launch_child', sys.argv[1]); "
        "m = u.module_from_spec(s); s.loader.exec_module(m); "
        "m.main(sys.argv[2], int(sys.argv[3]))")


def boot_info() -> dict:
    """What a rank needs before it can unpickle: the path, and how to find ``__main__``."""
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    return {"path": list(sys.path), "main_name": getattr(spec, "name", None),
            "main_file": getattr(main_mod, "__file__", None)}


def _die_with_parent() -> None:
    """Linux: get SIGKILL if the launcher dies (ranks live in their own session)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (not Linux)
        pass


def _main_module(info: dict) -> None:
    """Make functions pickled from the launcher's ``__main__`` resolvable here
    (what multiprocessing's spawn does: import the module as ``__mp_main__``)."""
    import importlib
    import runpy
    import types

    if info.get("main_name") and info["main_name"] != "__main__":
        sys.modules["__main__"] = importlib.import_module(info["main_name"])
    elif info.get("main_file") and os.path.exists(info["main_file"]):
        mod = types.ModuleType("__mp_main__")
        mod.__dict__.update(runpy.run_path(info["main_file"], run_name="__mp_main__"))
        sys.modules["__main__"] = sys.modules["__mp_main__"] = mod


#: Longest message kept on the one error line (the full text is in the rank's log).
MAX_MESSAGE = 300


def _payload(run_dir: str, info: dict) -> tuple:
    """``(fn, args)``; the launcher's ``__main__`` is loaded only if they refer to it."""
    path = os.path.join(run_dir, "payload.pkl")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except AttributeError as exc:
        if "__main__" not in str(exc):
            raise
    _main_module(info)
    with open(path, "rb") as fh:
        return pickle.load(fh)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, whitespace folded, at most ~MAX_MESSAGE characters.

    A message that carries other tracebacks (DCP's ``CheckpointException`` holds
    every rank's) is cut to the innermost exception line, the cause.
    """
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        causes = [ln.strip() for ln in text.splitlines()
                  if re.match(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln)]
        if causes:
            text = causes[-1]
    msg = " ".join(text.split())
    if len(msg) > MAX_MESSAGE:
        msg = msg[:MAX_MESSAGE].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def record_failure(run_dir: str | Path, rank: int, exc: BaseException) -> None:
    """Write the traceback and a one-line summary where the launcher looks."""
    run_dir = Path(run_dir)
    (run_dir / f"rank-{rank}.log").write_text(
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    (run_dir / f"rank-{rank}.json").write_text(
        json.dumps({"time": getattr(exc, "seqpar_failed_at", time.time()),
                    "summary": one_line(exc)}))


def main(run_dir: str, rank: int) -> None:
    import signal

    _die_with_parent()
    # a launcher started in the background inherits SIGINT ignored; its ranks must not
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(os.path.join(run_dir, "boot.json")) as fh:
        info = json.load(fh)
    sys.path[:] = info["path"]
    code = 1
    try:
        fn, args = _payload(run_dir, info)
        code = int(fn(*args) or 0)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # SystemExit("message"): an error with a message, no traceback needed
            (Path(run_dir) / f"rank-{rank}.json").write_text(
                json.dumps({"time": time.time(), "summary": str(exc.code)}))
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the rank's log
        record_failure(run_dir, rank, exc)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)  # skip interpreter teardown (NCCL/gloo atexit hooks can block)
