"""docs/hf.md's `seqpar train` commands parse, and their option values pass the checks
made before any process exists (so a copied command fails only on the missing folder)."""

from __future__ import annotations

import os
import re
import shlex

from seqpar.train.cli import parse_config
from seqpar.train.preflight import check_values

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands(page: str) -> list[list[str]]:
    with open(os.path.join(ROOT, page), encoding="utf-8") as fh:
        text = fh.read()
    out = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("seqpar train"):
                out.append(shlex.split(line)[2:])
    return out


def test_hf_page_train_commands_parse():
    commands = _commands("docs/hf.md")
    assert len(commands) >= 3, commands  # the recipe and the memory options
    for argv in commands:
        cfg = parse_config(argv)
        assert cfg.hf, argv
        check_values(cfg.resolve(cfg.sp or 1, cuda=False))
    flags = {a for argv in commands for a in argv if a.startswith("--")}
    assert {"--loss-chunk", "--mlp-chunk", "--memory"} <= flags, flags
