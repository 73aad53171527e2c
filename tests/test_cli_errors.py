"""Bad input: one line naming the flag the user typed and the fix, exit code 2, checked before any
work, nothing lost and no directory created."""

import subprocess
import sys

import pytest

from fastdqn.cli import main


def tree(*roots):
    return {(str(p), p.stat().st_mtime_ns) for root in roots for p in [root, *root.rglob("*")]}


CASES = [
    # (argv, what stderr must say); RUN: a CartPole run, FILE: a regular file, TMP: an empty directory
    (["train", "--resume", "--run-dir", "RUN", "--env-id", "Breakout-v5"], "--env-id cannot change on --resume"),
    (["train", "--resume", "--run-dir", "RUN", "--torso", "nips"], "--torso cannot change on --resume"),
    (["train", "--resume", "--run-dir", "TMP/none"], "--resume: no checkpoint in"),
    (["train", "--preset", "cartpole", "--run-dir", "FILE/run"], "--run-dir FILE/run: FILE is a file"),
    (["train", "--preset", "cartpole", "--run-dir", "FILE"], "--run-dir FILE is a file, not a directory"),
    (["train", "--preset", "cartpole", "--learning-starts", "60000"],
     "--learning-starts 60000 is more than the replay holds (--buffer-size 50000"),
    (["train", "--preset", "cartpole", "--eps-schedule", "exp", "--eps-decay-steps", "0"],
     "--eps-decay-steps must be positive"),
    (["train", "--preset", "cartpole", "--batch-size", "512", "--buffer-size", "100"],
     "--batch-size 512 is more than the replay holds (--buffer-size 100)"),
    (["train", "--preset", "cartpole", "--buffer-size", "10"], "--buffer-size 10 is too small for --num-envs 4"),
    (["train", "--preset", "cartpole", "--env-batch-size", "8"], "--env-batch-size (8) cannot exceed --num-envs (4)"),
    (["train", "--preset", "cartpole", "--eps-mid-steps", "30000"], "--eps-final-steps (20000) must be >= --eps-mid-steps"),
    (["train", "--preset", "cartpole", "--lr-decay-start", "5000", "--lr-decay-end", "5000"],
     "--lr-decay-end (5000) must be > --lr-decay-start (5000), or 0 for a constant --lr"),
    (["plot", "RUN", "--out", "FILE/curve.png"], "--out FILE/curve.png: FILE is a file"),
    (["eval", "RUN", "--gif", "FILE/game.gif"], "--gif FILE/game.gif: FILE is a file"),
    (["eval", "RUN", "--episodes", "0"], "--episodes must be at least 1"),
    (["eval", "RUN", "--gif", "TMP/game.gif"], "--gif shows the agent's grey Atari frames; CartPole-v1 has none"),
    (["eval", "TMP/corrupt.pt"], "cannot read checkpoint TMP/corrupt.pt (truncated, corrupt"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(CASES)])
def test_bad_input_is_one_line_naming_the_flag_and_creates_nothing(argv, message, cartpole_run, tmp_path, capsys,
                                                                   monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a directory is expected")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    cwd = tmp_path / "cwd"  # where a default runs/ would go
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    names = {"RUN": str(cartpole_run), "FILE": str(blocked), "TMP": str(tmp_path)}

    def fill(text):
        for key, value in names.items():
            text = text.replace(key, value)
        return text

    before = tree(tmp_path, cartpole_run)
    assert main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert fill(message) in err and "Traceback" not in err and "weights_only" not in err
    assert tree(tmp_path, cartpole_run) == before  # nothing created, nothing changed


def test_eval_takes_a_run_directory(cartpole_run, capsys):
    assert main(["eval", str(cartpole_run), "--episodes", "2", "--max-steps", "20"]) == 0
    assert '"episodes": 2' in capsys.readouterr().out


def test_bench_name_help_is_that_benchmarks_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "replay", "--help"])
    assert exit_.value.code == 0 and "--capacity" in capsys.readouterr().out
    assert main(["bench", "--help"]) == 0 and "which benchmark" in capsys.readouterr().out


def test_the_cli_hides_gymnasiums_float32_warning(cartpole_run):
    out = subprocess.run([sys.executable, "-m", "fastdqn.cli", "eval", str(cartpole_run), "--episodes", "1",
                          "--max-steps", "10"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "precision lowered" not in out.stderr and out.stderr == ""
