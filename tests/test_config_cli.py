import subprocess
import sys

import pytest

from fastdqn.cli import build_parser
from fastdqn.config import PRESETS, from_arguments, make_config


def parse(*argv):
    args, rest = build_parser().parse_known_args(["train", *argv])
    assert not rest
    return from_arguments(args)


def test_flags_override_preset_override_defaults():
    cfg = parse("--preset", "cartpole", "--lr", "0.01", "--num-envs", "2", "--no-dueling", "--env-seed", "7")
    assert cfg.env.env_id == "CartPole-v1"  # from the preset
    assert cfg.total_steps == PRESETS["cartpole"]["total_steps"]
    assert cfg.lr == 0.01 and cfg.env.num_envs == 2 and cfg.dueling is False and cfg.env.seed == 7
    default = parse()
    assert default.env.env_id == "Breakout-v5" and default.lr == 1e-4 and default.dueling is True


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid(preset):
    make_config(preset)


@pytest.mark.parametrize(
    "changes, message",
    [(dict(gamma=1.5), "--gamma"), (dict(batch_size=0), "--batch-size"), (dict(replay_ratio=0), "--replay-ratio"),
     (dict(tau=2.0), "--tau"), (dict(device="tpu"), "--device"), (dict(eps_final=-0.1), "--eps-final"),
     (dict(eps_schedule="exp", eps_decay_steps=0), "--eps-decay-steps"),
     (dict(env=dict(num_envs=4, batch_size=8)), "--env-batch-size"),
     (dict(replay_window=1000), "--replay-window and --replay-window-steps go together"),
     (dict(replay_window_steps=1000), "--replay-window and --replay-window-steps go together"),
     (dict(replay_window=10**6, replay_window_steps=1000), r"--replay-window 1000000 must be in \[\d+, --buffer-size"),
     (dict(replay_window=-5, replay_window_steps=1000), "--replay-window must be >= 0")],
)
def test_bad_values_are_refused_by_the_flag_the_user_types(changes, message):
    with pytest.raises(ValueError, match=message):
        make_config("cartpole", **changes)


def test_a_renamed_or_unknown_preset_is_refused_in_one_line(capsys):
    for name, message in (("breakout-cpu-rainbow", "preset 'breakout-cpu-rainbow' is now called 'breakout-cpu'"),
                          ("breakout-gpu", "unknown preset 'breakout-gpu'; choose from breakout, ")):
        with pytest.raises(SystemExit) as exit_info:
            parse("--preset", name)
        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert exit_info.value.code == 2 and message in last_line


def test_cli_help_and_bad_input_exit_cleanly(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "fastdqn.cli", *a], capture_output=True, text=True)  # noqa: E731
    out = run("train", "--help")
    assert out.returncode == 0 and "--replay-ratio" in out.stdout and "sampled transitions" in out.stdout
    out = run("train", "--env-id", "Breakuot-v5", "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "Did you mean" in out.stderr and "Traceback" not in out.stderr
    out = run("eval", str(tmp_path / "nothing.pt"))
    assert out.returncode == 2 and "no checkpoint" in out.stderr


def test_default_run_dirs_are_named_like_cleanrl_and_never_shared(tmp_path):
    import dataclasses
    import re

    from fastdqn.config import HELP_GROUPS, TrainConfig, new_run_dir

    cfg = parse("--preset", "cartpole", "--seed", "3")
    assert cfg.run_dir == "" and cfg.exp_name == "cartpole" and parse().exp_name == "dqn"
    assert parse("--preset", "cartpole", "--exp-name", "mine").exp_name == "mine"
    dirs = [new_run_dir(cfg, tmp_path) for _ in range(3)]  # within one second
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert re.fullmatch(r"CartPole-v1__cartpole__3__\d{8}-\d{6}", dirs[0].name)
    assert [d.name[len(dirs[0].name):] for d in dirs] == ["", "-2", "-3"]
    # every flag has its --help group
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TrainConfig) if f.name != "env")


def test_help_is_grouped_with_choices_shown_and_presets_and_envs_are_listed(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "fastdqn.cli", *a], capture_output=True, text=True)  # noqa: E731
    out = run("train", "--help").stdout
    titles = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["options", "environment", "run", "replay", "learner", "exploration", "evaluation", "logging",
                      "checkpoints", "hardware", "on-policy", "distributed"]
    assert "--loss {huber,mse,pseudo_huber}" in out
    out = run("presets").stdout
    assert "cartpole:\n  --env-id CartPole-v1 --num-envs 4 --total-steps 60000" in out
    out = run("envs").stdout
    assert "Breakout-v5" in out and "CartPole-v1" in out and "HalfCheetah-v4" in out  # Atari, classic control, MuJoCo
    out = run("train", "--resume", "--preset", "cartpole")
    assert out.returncode == 2 and out.stderr.strip() == "error: --resume needs --run-dir: the directory of the run to continue"
