"""Learning curves from a run's TensorBoard events."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_scalars(run_dir: str | Path, tags: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    available = set(acc.Tags()["scalars"])
    out = {}
    for tag in tags:
        if tag in available:
            events = acc.Scalars(tag)
            out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 20) -> Path:
    """Write a PNG with training game scores (raw and smoothed) and evaluation means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    data = read_scalars(run_dir, ["charts/episodic_return", "eval/mean_return"])
    if not data:
        raise ValueError(f"{run_dir} has no episode or evaluation scores yet")
    out = Path(out) if out else run_dir / "learning_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if "charts/episodic_return" in data:
        steps, values = data["charts/episodic_return"]
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        ax.plot(steps, values, ".", ms=2, alpha=0.3, color="tab:blue", label="training game score")
        if len(values) >= smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1:], np.convolve(values, kernel, "valid"), color="tab:blue",
                    label=f"training, mean of {smooth} games")
    if "eval/mean_return" in data:
        steps, values = data["eval/mean_return"]
        ax.plot(steps, values, "o-", color="tab:red", label="evaluation mean (full games)")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("full-game score")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
