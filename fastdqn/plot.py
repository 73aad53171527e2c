"""Learning curves from runs' TensorBoard events: one run, or several overlaid. A run folder with no
events (a committed result: summary.json only) draws its evaluations from summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TRAINING, EVALUATION = "charts/episodic_return", "eval/mean_return"


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


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_run(ax, run_dir: str | Path, label: str | None = None, color: str | None = None, smooth: int = 20) -> None:
    """Draw a run's training game scores (mean of ``smooth`` games) and evaluation means onto ``ax``.
    Without a label (a run alone) the raw scores show too, training in blue and evaluation in red;
    with one (an overlay) the run is drawn in ``color`` and its evaluation line is labelled."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    data = read_scalars(run_dir, [TRAINING, EVALUATION])
    summary = run_dir / "summary.json"
    if EVALUATION not in data and summary.is_file():
        evals = json.loads(summary.read_text()).get("evals", [])
        if evals:
            data[EVALUATION] = (np.array([e["agent_steps"] for e in evals]), np.array([e["mean_return"] for e in evals]))
    if not data:
        raise ValueError(f"{run_dir} has no episode or evaluation scores yet")
    alone = label is None
    if TRAINING in data:
        steps, values = data[TRAINING]
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        window = min(smooth, len(values))
        if alone:
            ax.plot(steps, values, ".", ms=2, alpha=0.3, color="tab:blue", label="training game score")
        ax.plot(steps[window - 1:], np.convolve(values, np.ones(window) / window, "valid"),
                color="tab:blue" if alone else color, alpha=1.0 if alone else 0.45, lw=1.2,
                label=f"training, mean of {window} games" if alone else None)
    if EVALUATION in data:
        steps, values = data[EVALUATION]
        ax.plot(steps, values, "o-", ms=4 if alone else 3, color="tab:red" if alone else color,
                label="evaluation mean (full games)" if alone else label)
    ax.set_xlabel("agent steps")
    ax.set_ylabel("full-game score")
    ax.grid(alpha=0.3)


def plot_runs(run_dirs: list[str | Path], out: str | Path | None = None, smooth: int = 20) -> Path:
    """One run's learning curve (default RUN_DIR/learning_curve.png), or several runs overlaid,
    one colour each, labelled by their directory's name (default ./learning_curves.png)."""
    run_dirs = [Path(d) for d in run_dirs]
    if out is None:
        out = run_dirs[0] / "learning_curve.png" if len(run_dirs) == 1 else Path("learning_curves.png")
    names = [d.name for d in run_dirs]
    if len(set(names)) < len(names):  # runs/a/Pong and runs/b/Pong: the paths tell them apart
        names = [str(d) for d in run_dirs]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        if len(run_dirs) == 1:
            draw_run(ax, run_dirs[0], smooth=smooth)
            ax.set_title(run_dirs[0].name)
        else:
            for i, (run_dir, name) in enumerate(zip(run_dirs, names)):
                draw_run(ax, run_dir, label=name, color=f"C{i % 10}", smooth=smooth)
            ax.set_title(f"evaluation means (dots) and training scores (faint, mean of {smooth} games)", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return Path(out)


def plot_run(run_dir: str | Path, out: str | Path | None = None, smooth: int = 20) -> Path:
    """Write a PNG with one run's training game scores (raw and smoothed) and evaluation means."""
    return plot_runs([run_dir], out, smooth)
