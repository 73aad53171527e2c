"""The progress display: one rate, fields recomputed at every refresh, evaluation progress, plain
lines when the output is not a terminal."""

import io
import re

from fastdqn.config import make_config
from fastdqn.progress import Progress
from fastdqn.train import train


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_terminal_bar_shows_one_rate_and_fresh_fields_at_every_refresh():
    stream, clock = Terminal(), Clock()
    bar = Progress(1000, stream=stream, clock=clock)
    shown = []
    for steps, score, eps in [(100, 1.0, 0.9), (300, 2.5, 0.8), (400, 7.0, 0.7)]:
        clock.now += 1.0
        assert bar.due()
        bar.update(steps, score, eps)
        shown.append(stream.getvalue().rsplit("\r", 1)[-1])
    bar.close()
    assert [re.search(r"([\d,]+) steps/s, score ([^,]+), eps ([^,\]]+)", s).groups() for s in shown] == [
        ("100", "1.0", "0.900"), ("200", "2.5", "0.800"), ("100", "7.0", "0.700")]
    assert all(s.count("/s") == 1 for s in shown)  # tqdm's own rate is not shown beside ours
    assert "400/1000" in shown[-1]


def test_evaluation_time_is_left_out_of_the_rate_and_its_progress_is_shown():
    stream, clock = io.StringIO(), Clock()
    bar = Progress(1000, stream=stream, clock=clock, interval=5)
    clock.now = 5.0
    bar.update(500, None, 1.0)
    bar.evaluating(3, 8, 14.25)
    clock.now = 105.0  # a long evaluation
    bar.evaluation_done()
    clock.now = 110.0
    assert bar.due()
    bar.update(1000, 3.0, 0.5)
    assert stream.getvalue().splitlines() == [
        "step 500/1,000 (50%), 100 steps/s, score -, eps 1.000, 0.1 min",
        "evaluating: game 3/8, mean so far 14.2",
        "step 1,000/1,000 (100%), 100 steps/s, score 3.0, eps 0.500, 1.8 min",
    ]


def test_training_prints_plain_periodic_lines_whose_fields_change(tmp_path, capsys, one_torch_thread):
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"), total_steps=1500, learning_starts=300,
                      eval_interval=750, eval_episodes=2, checkpoint_interval=0, progress_interval=0.05,
                      eps_mid_steps=1500)
    train(cfg, progress=True)
    lines = capsys.readouterr().err.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) >= 3 and "\r" not in "".join(lines)
    epsilons = [re.search(r"eps ([\d.]+)", line).group(1) for line in progress]
    steps = [re.match(r"step ([\d,]+)", line).group(1) for line in progress]
    # refreshed each time: wherever the step moved on between two lines (epsilon falls over
    # the whole run), epsilon moved too (a line may repeat the step on a loaded machine)
    moved = [(e0 != e1) for (s0, e0), (s1, e1) in zip(zip(steps, epsilons), zip(steps[1:], epsilons[1:]))
             if s0 != s1]
    assert len(moved) >= 2 and all(moved)
    assert progress[-1].startswith("step 1,500/1,500 (100%)") and epsilons[-1] == f"{0.05:.3f}"
    assert any(line.startswith("evaluating: game ") for line in lines)
    assert any(line.startswith("eval at step 752:") for line in lines)  # 4 envs: steps are multiples of 4
