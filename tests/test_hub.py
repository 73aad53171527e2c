"""Sharing agents: the folder `fastdqn push` uploads, its model card, and loading it back for
evaluation from a folder or hf://USER/NAME. Nothing here touches the network."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("safetensors")

from fastdqn import hub  # noqa: E402
from fastdqn.cli import main  # noqa: E402


def eval_score(source, capsys):
    assert main(["eval", str(source), "--episodes", "3", "--eps", "0.05", "--seed", "3", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)["returns"]


def test_pushed_folder_holds_weights_config_curve_video_and_a_card(cartpole_run, tmp_path):
    folder = hub.export(cartpole_run, tmp_path / "upload", "someone/cartpole-dqn")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "learning_curve.png", "model.safetensors", "replay.mp4", "summary.json"]
    card = (folder / "README.md").read_text()
    summary = json.loads((cartpole_run / "summary.json").read_text())
    assert "CartPole-v1" in card
    assert f"{summary['eval_mean_return']:.2f} ± {summary['eval_std_return']:.2f}" in card
    assert "**Protocol**: CartPole-v1 (EnvPool classic control)" in card
    assert "fastdqn eval hf://someone/cartpole-dqn" in card
    assert ("fastdqn train --preset cartpole --torch-threads 1 --total-steps 1500 --learning-starts 300 "
            "--eval-interval 0 --eval-episodes 2 --checkpoint-interval 0\n" in card)


def test_atari_protocol_is_named_from_the_env_options():
    from fastdqn.envs import EnvConfig, describe_protocol

    assert describe_protocol(EnvConfig()).startswith("v4 protocol: no sticky actions, frame skip 4, up to 30 no-op "
                                                     "starts, minimal action set, FIRE at reset")
    machado = EnvConfig(protocol="machado", repeat_action_probability=0.25, noop_max=0, full_action_space=True,
                        use_fire_reset=False, episodic_life=False)
    assert describe_protocol(machado).startswith("machado protocol: sticky actions p=0.25, frame skip 4, up to 0 no-op "
                                                 "starts, full 18-action set, no FIRE at reset, no life information")
    changed = describe_protocol(EnvConfig(repeat_action_probability=0.25))
    assert changed.startswith("v4 protocol (changed: repeat_action_probability 0.25 instead of 0.0): sticky actions")


def test_eval_of_the_pushed_folder_and_of_hf_reproduces_the_checkpoints_score(cartpole_run, tmp_path, capsys,
                                                                             monkeypatch):
    folder = hub.export(cartpole_run, tmp_path / "upload", "someone/cartpole-dqn")
    from_checkpoint = eval_score(cartpole_run / "checkpoint.pt", capsys)
    assert eval_score(folder, capsys) == from_checkpoint
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id: asked.append(repo_id) or str(folder))
    assert eval_score("hf://someone/cartpole-dqn", capsys) == from_checkpoint and asked == ["someone/cartpole-dqn"]


def test_push_uploads_the_exported_folder(cartpole_run, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert hub.push(cartpole_run, "someone/cp", private=True) == "https://huggingface.co/someone/cp"
    assert calls[0] == ("create", "someone/cp", True)
    assert calls[1][:2] == ("upload", "someone/cp") and "model.safetensors" in calls[1][2]


def test_push_without_the_hub_extra_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['huggingface_hub'] = None; sys.modules['safetensors'] = None; "
            "from fastdqn.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "push", str(tmp_path), "--repo-id", "a/b"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: sharing agents on the Hugging Face Hub needs huggingface_hub: "
                                  "pip install 'fastdqn[hub]'")
