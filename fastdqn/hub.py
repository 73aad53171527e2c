"""Sharing trained agents on the Hugging Face Hub, and loading them back for evaluation.

``fastdqn push RUN_DIR --repo-id USER/NAME`` uploads one folder (``export`` writes it):

    model.safetensors    the weights of the network that acts, only (no optimizer, no pickle): the
                         online Q-network (DQN, PQN), the actor (DDPG, TD3), the policy-value
                         network (A2C)
    config.json          the training config, observation shape and number of actions
    summary.json         the run's summary (scores, steps, wall time)
    learning_curve.png   training and evaluation scores over agent steps
    replay.mp4 / .gif    the last evaluation video the run recorded, if any
    README.md            the model card: env, protocol, score, the command that reproduces it

``load_policy`` reads a checkpoint.pt, a run directory, such a folder, or ``hf://USER/NAME``
(downloaded first) and rebuilds the acting rule the run evaluated with, for every algorithm.
huggingface_hub and safetensors are imported only here, only when asked for.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from fastdqn import checkpoint
from fastdqn.config import TrainConfig, command_line, config_from_dict
from fastdqn.envs import describe_protocol
from fastdqn.extras import require

FORMAT = "fastdqn-model-1"
HF_PREFIX = "hf://"


def _require_hub(module: str = "huggingface_hub"):
    return require(module, "hub", "sharing agents on the Hugging Face Hub")


def export(run_dir: str | Path, out_dir: str | Path, repo_id: str) -> Path:
    """Write the folder that ``push`` uploads; return it."""
    safetensors_torch = _require_hub("safetensors.torch")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = checkpoint.load(run_dir / "checkpoint.pt")
    cfg = config_from_dict(state["config"])
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"no summary.json in {run_dir}: has this run finished an evaluation?")
    summary = json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    policy = _evaluation_rule(cfg, state["obs_shape"], state["num_actions"], "cpu")
    policy.agent.load_state_dict(state["learner"])
    weights = {name: tensor.contiguous() for name, tensor in policy.network.state_dict().items()}
    safetensors_torch.save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": FORMAT})
    (out_dir / "config.json").write_text(json.dumps(
        {"format": FORMAT, "config": state["config"], "obs_shape": list(state["obs_shape"]),
         "num_actions": state["num_actions"]}, indent=2) + "\n")
    shutil.copy(summary_path, out_dir / "summary.json")
    files = ["model.safetensors", "config.json", "summary.json"]
    try:
        from fastdqn.plot import plot_run

        plot_run(run_dir, out_dir / "learning_curve.png")
        files.append("learning_curve.png")
    except ValueError:  # no scores logged yet
        pass
    video = _latest_video(run_dir)
    if video is not None:
        shutil.copy(video, out_dir / f"replay{video.suffix}")
        files.append(f"replay{video.suffix}")
    (out_dir / "README.md").write_text(model_card(cfg, summary, repo_id, files))
    return out_dir


def _latest_video(run_dir: Path) -> Path | None:
    videos = sorted((run_dir / "videos").glob("*.mp4"))  # eval-step<9 digits>.mp4: sorted by step
    if videos:
        return videos[-1]
    gif = run_dir / "eval.gif"
    return gif if gif.exists() else None


def model_card(cfg: TrainConfig, summary: dict, repo_id: str, files: list[str]) -> str:
    env_id = cfg.env.env_id
    mean, std = summary.get("eval_mean_return"), summary.get("eval_std_return", 0.0)
    score = "not evaluated" if mean is None else f"{mean:.2f} ± {std:.2f}"
    steps, frames = summary.get("agent_steps", 0), summary.get("frames", 0)
    video = next((f for f in files if f.startswith("replay")), None)
    name = cfg.algorithm.upper()
    lines = [
        "---",
        "library_name: fastdqn",
        f"tags: [reinforcement-learning, deep-reinforcement-learning, {cfg.algorithm}, envpool, {env_id}]",
        "model-index:",
        f"- name: {name}",
        "  results:",
        "  - task: {type: reinforcement-learning, name: reinforcement-learning}",
        f"    dataset: {{name: {env_id}, type: {env_id}}}",
        "    metrics:",
        f"    - {{type: mean_reward, value: '{score}', name: mean_reward, verified: false}}",
        "---",
        "",
        f"# {name} on {env_id} (fastdqn)",
        "",
        f"{_agent_words(cfg)} trained with fastdqn on EnvPool's `{env_id}`.",
        "",
        f"- **Score**: {score} (mean ± std over {summary.get('eval_episodes', '?')} full games, "
        f"evaluation epsilon {cfg.eval_eps:g}); best evaluation mean during training "
        f"{summary.get('best_eval_mean_return', float('nan')):.2f}",
        f"- **Protocol**: {describe_protocol(cfg.env)}",
        f"- **Training**: {steps:,} agent steps ({frames:,} frames), {summary.get('wall_seconds', 0) / 60:.1f} "
        f"minutes on {summary.get('device', '?')}; stopped because: {summary.get('stop_reason', '?')}",
        "",
        "## Evaluate it",
        "",
        "With fastdqn installed with its `hub` extra (`pip install '.[hub]'` in a checkout):",
        "",
        f"    fastdqn eval {HF_PREFIX}{repo_id} --episodes 10",
        "",
        "## Reproduce it",
        "",
        f"    {command_line(cfg)}",
        "",
    ]
    if "learning_curve.png" in files:
        lines += ["## Learning curve", "", "![learning curve](learning_curve.png)", ""]
    if video:
        lines += ["## Video", "", f"The first game of the last evaluation: [{video}]({video}).", ""]
    lines += ["## Files", ""] + [f"- `{name}`" for name in files + ["README.md"]] + [""]
    return "\n".join(lines)


def push(run_dir: str | Path, repo_id: str, *, private: bool = False) -> str:
    """Export the run and upload it to the Hub repository ``repo_id``; return its URL."""
    hub = _require_hub()
    api = hub.HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        folder = export(run_dir, tmp, repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload fastdqn agent")
    return f"https://huggingface.co/{repo_id}"


def _agent_words(cfg) -> str:
    """The model card's sentence subject: which agent, and which of its networks the weights are."""
    if cfg.algorithm in ("ddpg", "td3"):
        return f"A {cfg.algorithm.upper()} agent (its deterministic actor's weights; evaluated without noise)"
    if cfg.algorithm == "a2c":
        return "An A2C agent (its policy-value network's weights; evaluated greedily, the most probable action)"
    if cfg.algorithm == "pqn":
        return "A PQN agent (its Q-network with LayerNorm)"
    return f"A {'dueling ' if cfg.dueling else ''}{'double ' if cfg.double_q else ''}DQN agent{_head_words(cfg)}"


def _head_words(cfg) -> str:
    """How the model card names a distributional head (nothing for the scalar one)."""
    head = getattr(cfg, "head", "scalar")  # (configs saved before the heads existed)
    if head == "c51":
        return f" with a C51 head ({cfg.num_atoms or 51} atoms on [{cfg.v_min:g}, {cfg.v_max:g}])"
    if head == "qr":
        return f" with a QR-DQN head ({cfg.num_atoms or 200} quantiles)"
    return ""


def load_policy(source: str | Path, device="cpu"):
    """(config, acting rule) from a checkpoint.pt, a run directory, a folder written by ``export``,
    or hf://USER/NAME: the rule the run evaluated with (``train.build_agent``'s third), its network's
    weights loaded, on ``device``."""
    source = str(source)
    if source.startswith(HF_PREFIX):
        source = _require_hub().snapshot_download(repo_id=source[len(HF_PREFIX):])
    path = Path(source)
    if (path / "model.safetensors").exists():
        safetensors_torch = _require_hub("safetensors.torch")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path / 'config.json'} is not a fastdqn model folder")
        cfg = config_from_dict(meta["config"])
        policy = _evaluation_rule(cfg, meta["obs_shape"], meta["num_actions"], device)
        policy.network.load_state_dict(safetensors_torch.load_file(str(path / "model.safetensors")))
        return cfg, policy
    if path.is_dir():
        path = path / "checkpoint.pt"
    state = checkpoint.load(path)
    cfg = config_from_dict(state["config"])
    policy = _evaluation_rule(cfg, state["obs_shape"], state["num_actions"], device)
    policy.agent.load_state_dict(state["learner"])
    return cfg, policy


def _evaluation_rule(cfg: TrainConfig, obs_shape, num_actions: int, device):
    """The agent a run of ``cfg`` builds (untrained) and its evaluation acting rule, which carries
    it as ``.agent``. A one-env pool of the task gives what a checkpoint does not hold (a continuous
    task's action bounds); the network's shapes come from the run."""
    import torch

    from fastdqn.envs import VecEnv
    from fastdqn.train import build_agent, resolve_device

    probe = VecEnv(replace(cfg.env, num_envs=1, batch_size=0, num_threads=1))
    probe.close()
    spec = SimpleNamespace(obs_shape=tuple(obs_shape), num_actions=num_actions, num_envs=cfg.env.num_envs,
                           action_low=getattr(probe, "action_low", None), action_high=getattr(probe, "action_high", None))
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    agent, _, policy = build_agent(cfg, spec, device)
    policy.agent = agent
    return policy


