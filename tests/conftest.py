import os

# No network in tests; the tests never need a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BENCH_NO_REEXEC", "1")
# Triton kernels run on a CPU only under the interpreter, and the switch is read when triton first
# compiles a kernel: set it before any test imports triton (a GPU machine runs them natively).
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test writes trained artefacts and statistics into a throwaway cache, never ~/.cache."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path_factory.getbasetemp() / "bench-cache"))


@pytest.fixture(scope="module")
def kernel_device():
    """Where the Triton kernels run: 'cuda' on a GPU, else 'cpu' under the interpreter (switched on above)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny per-row ops run many times faster in one thread on a busy CPU: a module opts in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`; the thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
