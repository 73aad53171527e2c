"""Ctrl-C / SIGTERM at any moment: the run ends within seconds with a valid checkpoint; a second
signal exits at once and leaves the last good checkpoint intact."""

import os
import signal

import pytest

from fastdqn import checkpoint
from fastdqn import train as train_mod
from fastdqn.config import make_config
from fastdqn.interrupts import Abort
from fastdqn.train import train


def cartpole(run_dir, **changes):
    options = dict(run_dir=str(run_dir), total_steps=3000, learning_starts=300, checkpoint_interval=400,
                   eval_interval=800, eval_episodes=4, eval_max_steps=500, torch_threads=1)
    return make_config("cartpole", **{**options, **changes})


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_an_evaluation_drops_it_and_ends_with_a_checkpoint(tmp_path, monkeypatch, signum):
    real_evaluate = train_mod.evaluate
    games_played = []

    def evaluate(*args, on_game_end, **kwargs):
        def game_end(done, games, mean):  # the signal arrives after the first game of the first evaluation
            games_played.append(done)
            if done == 1:
                os.kill(os.getpid(), signum)
            on_game_end(done, games, mean)

        return real_evaluate(*args, on_game_end=game_end, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    run_dir = tmp_path / "run"
    handler = signal.getsignal(signum)
    summary = train(cartpole(run_dir), progress=False)
    assert summary["stop_reason"] == "interrupted"
    # the evaluation stopped within the env step of the signal (games ending in it are counted), not after its 4 games
    assert games_played[0] == 1 and games_played[-1] < 4, games_played
    assert summary["agent_steps"] == 800 and "evals" not in summary  # dropped, not recorded
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert state["counters"]["agent_steps"] == 800
    assert state["counters"]["next_eval"] <= 800  # it runs again after a resume
    assert checkpoint.load_replay(run_dir / "checkpoint.pt", state)[0] is not None  # kept across Ctrl-C
    assert signal.getsignal(signum) is handler  # handlers given back


def test_a_second_signal_during_a_checkpoint_write_exits_at_once_and_keeps_the_last_one(tmp_path, monkeypatch,
                                                                                      capsys):
    real_keep = checkpoint._keep_as_previous
    saves = []

    def keep_as_previous(path):  # the new checkpoint is written, not yet renamed into place
        saves.append(path)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real_keep(path)

    monkeypatch.setattr(checkpoint, "_keep_as_previous", keep_as_previous)
    run_dir = tmp_path / "run"
    with pytest.raises(Abort):
        train(cartpole(run_dir, eval_interval=0), progress=False)
    assert len(saves) == 2
    first = checkpoint.load(run_dir / "checkpoint.pt")  # the checkpoint written when learning started
    assert first["counters"]["agent_steps"] == 300
    assert checkpoint.load_replay(run_dir / "checkpoint.pt", first)[0] is not None
    assert sorted(p.name for p in run_dir.iterdir() if "tmp" in p.name) == []
    assert "aborted by a second SIGINT: the last good checkpoint is" in capsys.readouterr().err
    assert not (run_dir / "summary.json").exists()  # nothing more was written
