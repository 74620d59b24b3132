import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from distributed import run_distributed  # noqa: E402
from parity import TEXT  # noqa: E402


@pytest.fixture
def spawn():
    """``spawn(fn, world_size, *args)``: run ``fn(rank, world_size, *args)`` on gloo ranks."""
    return run_distributed


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA GPUs")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _launcher_logs(tmp_path_factory):
    """Rank logs of runs that fail on purpose go to pytest's temp folder, not /tmp."""
    old = os.environ.get("SEQPAR_LOG_DIR")
    os.environ["SEQPAR_LOG_DIR"] = str(tmp_path_factory.mktemp("launcher-logs"))
    yield
    if old is None:
        os.environ.pop("SEQPAR_LOG_DIR", None)
    else:
        os.environ["SEQPAR_LOG_DIR"] = old


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A .jsonl of packed text documents (tests/parity.py's TEXT)."""
    path = tmp_path_factory.mktemp("text") / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in TEXT.split("\n")) + "\n")
    return str(path)
