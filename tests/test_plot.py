"""fastdqn plot: one run as before, several overlaid (one colour per run, labelled by its directory)."""

import matplotlib
import pytest

from fastdqn.cli import main

matplotlib.use("Agg")


def fake_run(path, offset):
    """A run directory with TensorBoard scores only: 30 training games and 3 evaluations."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(path))
    for step in range(30):
        writer.add_scalar("charts/episodic_return", offset + step, step * 10)
    for step in (100, 200, 300):
        writer.add_scalar("eval/mean_return", offset + step / 10, step)
    writer.close()
    return path


@pytest.fixture
def legends(monkeypatch):
    """What each saved figure's legend says and the colour of each of its lines, by label."""
    from matplotlib.figure import Figure

    saved = []

    def savefig(fig, out, *args, **kwargs):
        ax = fig.axes[0]
        saved.append({text.get_text(): line.get_color()
                      for text, line in zip(ax.get_legend().get_texts(), ax.get_legend().get_lines())})
        with open(out, "wb") as f:
            f.write(b"\x89PNG fake")

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_overlay_draws_each_run_in_its_own_colour_labelled_by_its_directory(tmp_path, legends, capsys):
    a, b = fake_run(tmp_path / "lr-1e-4", 0), fake_run(tmp_path / "lr-1e-3", 100)
    out = tmp_path / "both.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert out.exists() and capsys.readouterr().out.strip() == str(out)
    assert list(legends[0]) == ["lr-1e-4", "lr-1e-3"]
    assert len(set(legends[0].values())) == 2  # one colour per run


def test_overlay_of_runs_with_the_same_name_labels_them_by_path(tmp_path, legends):
    a, b = fake_run(tmp_path / "x" / "Pong", 0), fake_run(tmp_path / "y" / "Pong", 5)
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "p.png")]) == 0
    assert list(legends[0]) == [str(a), str(b)]


def test_overlay_colours_every_line_of_a_run_alike(tmp_path):
    """The faint training curve and the evaluation line of a run share its colour."""
    from fastdqn.plot import draw_run, pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    draw_run(ax, fake_run(tmp_path / "a", 0), label="a", color="C3")
    colours = {line.get_color() for line in ax.get_lines()}
    plt.close(fig)
    assert len(ax.get_lines()) == 2 and colours == {"C3"}


def test_one_run_plots_as_before(tmp_path, legends):
    run = fake_run(tmp_path / "run", 0)
    assert main(["plot", str(run)]) == 0
    assert (run / "learning_curve.png").exists()
    assert list(legends[0]) == ["training game score", "training, mean of 20 games", "evaluation mean (full games)"]


def test_a_real_png_is_written(tmp_path):
    a, b = fake_run(tmp_path / "a", 0), fake_run(tmp_path / "b", 1)
    assert main(["plot", str(a), str(b), "--out", str(tmp_path / "ab.png")]) == 0
    assert (tmp_path / "ab.png").read_bytes()[:4] == b"\x89PNG"


def test_a_missing_run_directory_is_one_line_and_writes_nothing(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 0)
    assert main(["plot", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "ab.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: no run directory at {tmp_path / 'nope'}\n" and not (tmp_path / "ab.png").exists()


def test_a_committed_run_folder_with_only_summary_json_draws_its_evaluations(tmp_path):
    import json

    from fastdqn.plot import draw_run, pyplot

    folder = tmp_path / "committed"
    folder.mkdir()
    evals = [{"agent_steps": s, "wall_seconds": s / 100, "mean_return": r} for s, r in ((100, 1.5), (200, 7.0))]
    (folder / "summary.json").write_text(json.dumps({"evals": evals}))
    plt = pyplot()
    fig, ax = plt.subplots()
    draw_run(ax, folder, label="committed", color="C1")
    (line,) = ax.get_lines()
    plt.close(fig)
    assert list(line.get_xdata()) == [100, 200] and list(line.get_ydata()) == [1.5, 7.0]
