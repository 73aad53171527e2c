"""Every algorithm's finished run: `fastdqn eval` of its checkpoint, with the run's own evaluation
settings and seed, replays its final evaluation game for game; the folder `fastdqn push` uploads
evaluates like the checkpoint; the agent's own losses are logged beside the loop's."""

import json

import numpy as np
import pytest

from fastdqn.cli import main
from fastdqn.config import make_config
from fastdqn.train import train

RUNS = {
    # a few thousand steps each: enough for weights that are not the initial ones, seconds to train
    "td3": dict(algorithm="td3", env=dict(env_id="InvertedPendulum-v4", num_envs=2), total_steps=1200,
                buffer_size=5000, learning_starts=300, batch_size=32, replay_ratio=8.0, n_step=1, per_alpha=0.0,
                hidden=32, tau=0.005, eval_eps=0.0, eval_max_steps=300),
    "a2c": dict(preset="cartpole-a2c", total_steps=20_000),
    "pqn": dict(preset="cartpole-pqn", total_steps=3000),
    "dqn": dict(preset="cartpole", total_steps=1500, learning_starts=300),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def finished_run(request, tmp_path_factory):
    options = dict(RUNS[request.param])
    preset = options.pop("preset", None)
    run_dir = tmp_path_factory.mktemp(request.param) / "run"
    cfg = make_config(preset, run_dir=str(run_dir), eval_interval=0, eval_episodes=3, checkpoint_interval=0,
                      log_interval=400, torch_threads=1, **options)
    summary = train(cfg, progress=False)
    return request.param, cfg, summary, run_dir


def eval_returns(source, cfg, summary, capsys) -> list[float]:
    # the final evaluation's settings and seed (train.py: seed + 777 + the agent step)
    assert main(["eval", str(source), "--episodes", str(cfg.eval_episodes), "--eps", str(cfg.eval_eps),
                 "--max-steps", str(cfg.eval_max_steps), "--seed", str(cfg.seed + 777 + summary["agent_steps"]),
                 "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)["returns"]


def test_eval_of_a_finished_run_replays_its_final_evaluation(finished_run, capsys):
    algorithm, cfg, summary, run_dir = finished_run
    assert summary["evals"][-1]["agent_steps"] == summary["agent_steps"]
    assert eval_returns(run_dir, cfg, summary, capsys) == summary["eval_returns"], algorithm


def test_the_exported_folder_evaluates_like_the_checkpoint(finished_run, tmp_path, capsys):
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("safetensors")
    from fastdqn import hub

    algorithm, cfg, summary, run_dir = finished_run
    folder = hub.export(run_dir, tmp_path / "upload", f"someone/{algorithm}")
    card = (folder / "README.md").read_text()
    assert f"# {algorithm.upper()} on {cfg.env.env_id} (fastdqn)" in card
    assert eval_returns(folder, cfg, summary, capsys) == summary["eval_returns"], algorithm


# what each agent reports besides the loop's own losses/td_loss, q_values and td_abs
OWN_LOSSES = {"td3": {"losses/actor_loss"}, "a2c": {"losses/policy_loss", "losses/value_loss", "losses/entropy"},
              "pqn": set(), "dqn": set()}


def test_each_agent_logs_its_own_losses_beside_the_loops(finished_run):
    from fastdqn.plot import read_scalars

    algorithm, cfg, summary, run_dir = finished_run
    every = set().union(*OWN_LOSSES.values())
    logged = read_scalars(run_dir, sorted(every | {"losses/td_loss"}))
    assert set(logged) - {"losses/td_loss"} == OWN_LOSSES[algorithm]
    steps, values = logged["losses/td_loss"]
    for tag in OWN_LOSSES[algorithm]:
        own_steps, own_values = logged[tag]
        assert list(own_steps) == list(steps) and np.isfinite(own_values).all(), tag
    if algorithm == "a2c":  # the policy's entropy over CartPole's two actions
        assert (0 < logged["losses/entropy"][1]).all() and (logged["losses/entropy"][1] <= np.log(2) + 1e-6).all()
