import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two intra-op threads on a 2-core machine shared with other jobs can run 20x slower
    (OpenMP barriers); small-network tests use one thread, which is plenty and steady."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
