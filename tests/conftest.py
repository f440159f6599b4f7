from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    no_data = pytest.mark.skip(reason=f"real data folder {SHARED_DATA} is absent")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "real_data" in item.keywords and not SHARED_DATA.is_dir():
            item.add_marker(no_data)


@pytest.fixture(autouse=True)
def _scan_backend_env(monkeypatch):
    """Tests choose their backend explicitly; a backend forced in the caller's shell must not leak in."""
    monkeypatch.delenv("MONAI_MAMBA_SCAN_BACKEND", raising=False)


@pytest.fixture
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture
def exact_float32(monkeypatch):
    """TF32 off in cuDNN and cuBLAS: comparisons of scan backends must not see TF32 rounding of convolutions,
    which turns a 1e-7 difference upstream into a 2^-11 step downstream."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
