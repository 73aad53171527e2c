"""What a run shows: TensorBoard scalars and texts, summary.json (rewritten atomically), and the
same scalars, config and videos in Weights & Biases with --track."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastdqn.config import TrainConfig, to_dict
from fastdqn.tracking import WandbTracker
from fastdqn.video import GameRecorder, add_to_tensorboard


class RunLog:
    """TensorBoard scalars, the hyper-parameters, and summary.json (rewritten atomically); the
    same scalars, config and videos to Weights & Biases with --track."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        # On resume, TensorBoard drops what the lost part of the run (after the checkpoint) logged.
        self.writer = SummaryWriter(str(run_dir), purge_step=resume_step)
        config = to_dict(cfg)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
        self.summary: dict = {"env_id": cfg.env.env_id, "config": config}
        path = run_dir / "summary.json"
        if resume_step is not None and path.exists():
            # evaluations after the checkpoint belong to the lost part of the run: the resumed
            # run makes its own; learning_sps is this process's own figure
            saved = json.loads(path.read_text())
            saved["evals"] = [e for e in saved.get("evals", []) if e["agent_steps"] <= resume_step]
            saved.pop("learning_sps", None)
            self.summary = {**saved, "config": config}
        self.tracker = None
        if cfg.track:
            self.tracker = WandbTracker(run_dir, config, project=cfg.wandb_project, entity=cfg.wandb_entity,
                                        name=run_dir.name, run_id=self.summary.get("wandb_run_id"))
            self.summary["wandb_run_id"] = self.tracker.run_id

    def scalars(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        if self.tracker is not None:
            self.tracker.scalars(step, values)

    def video(self, step: int, recording: GameRecorder) -> None:
        """An evaluation game's MP4: a GIF preview of its start in TensorBoard, the whole in W&B."""
        add_to_tensorboard(self.writer, "eval/video", recording.preview, recording.fps, step)
        if self.tracker is not None:
            self.tracker.video(step, "eval/video", recording.path)

    def write_summary(self, **fields) -> None:
        self.summary.update(fields)
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2) + "\n")
        os.replace(tmp, self.run_dir / "summary.json")

    def close(self) -> None:
        self.writer.close()
        if self.tracker is not None:
            self.tracker.close()
