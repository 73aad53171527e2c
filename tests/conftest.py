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


@pytest.fixture(scope="session")
def cartpole_run(tmp_path_factory):
    """A short CartPole run directory (checkpoint, summary, events, one eval video): a few seconds."""
    pytest.importorskip("imageio_ffmpeg")
    from fastdqn.config import make_config
    from fastdqn.train import train

    run_dir = tmp_path_factory.mktemp("cartpole") / "run"
    previous = torch.get_num_threads()
    cfg = make_config("cartpole", run_dir=str(run_dir), total_steps=1500, learning_starts=300, eval_interval=0,
                      eval_episodes=2, checkpoint_interval=0, capture_video=True, torch_threads=1)
    train(cfg, progress=False)
    torch.set_num_threads(previous)
    return run_dir
