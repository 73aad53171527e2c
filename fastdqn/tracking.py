"""Weights & Biases tracking (``--track``): the config, the same scalars as TensorBoard, videos.

wandb is imported only here and only when --track is given. With WANDB_MODE=offline it logs
to RUN_DIR/wandb/ without a network (``wandb sync`` uploads it later).
"""

from __future__ import annotations

from pathlib import Path

from fastdqn.extras import require


def require_wandb():
    return require("wandb", "track", "--track (Weights & Biases)")


class WandbTracker:
    def __init__(self, run_dir: Path, config: dict, *, project: str, entity: str, name: str,
                 run_id: str | None = None):
        wandb = require_wandb()
        self._wandb = wandb
        # A resumed training run continues the same W&B run (its id is kept in summary.json).
        self.run = wandb.init(project=project, entity=entity or None, name=name, config=config, dir=str(run_dir),
                              id=run_id, resume="allow" if run_id else None)
        # x-axis: agent steps, as in TensorBoard (W&B's own step counts log calls)
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")

    @property
    def run_id(self) -> str:
        return self.run.id

    def scalars(self, step: int, values: dict) -> None:
        self.run.log({**values, "global_step": step})

    def video(self, step: int, tag: str, path: Path) -> None:
        self.run.log({tag: self._wandb.Video(str(path), format="mp4"), "global_step": step})

    def close(self) -> None:
        self.run.finish()
