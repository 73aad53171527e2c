"""fastdqn suite: one run per game, human-normalised scores over the games, resumable."""

import json

import numpy as np
import pytest

from fastdqn import suite
from fastdqn.cli import main

# two games, tiny runs: about 6 s each on 2 cores
TINY = ["--games", "Pong,breakout-v5", "--num-envs", "4", "--buffer-size", "2000", "--learning-starts", "400",
        "--replay-ratio", "1", "--eval-interval", "0", "--eval-episodes", "1", "--eval-max-steps", "100",
        "--max-episode-steps", "100", "--checkpoint-interval", "0", "--torch-threads", "1", "--no-progress"]


def test_hns_median_and_iqm_match_a_hand_computation():
    scores = {
        "Pong": 14.6,  # human: 1
        "Breakout": 1.7,  # random: 0
        "BattleZone": 2360.0 + 0.5 * (37187.5 - 2360.0),  # 0.5
        "DoubleDunk": -18.6 + 3 * 2.2,  # 3 (human -16.4, random -18.6)
        "Qbert": 163.9 + 0.25 * (13455.0 - 163.9),  # 0.25
        "Atlantis2": 1000.0,  # no reference scores
        "Phoenix": None,  # no score (diverged)
    }
    table = suite.score_table(scores)
    hns = {row["game"]: row["hns"] for row in table["games"]}
    assert hns == pytest.approx({"Pong": 1.0, "Breakout": 0.0, "BattleZone": 0.5, "DoubleDunk": 3.0, "Qbert": 0.25,
                                 "Atlantis2": None, "Phoenix": None})
    atlantis2 = table["games"][5]
    assert atlantis2["score"] == 1000.0 and atlantis2["random"] is None and atlantis2["human"] is None
    # sorted HNS 0, 0.25, 0.5, 1, 3: median 0.5; IQM drops int(5 / 4) = 1 from each end: mean(0.25, 0.5, 1)
    assert table["median_hns"] == pytest.approx(0.5)
    assert table["iqm_hns"] == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    assert table["games_with_hns"] == 5
    assert suite.REFERENCE_SCORES["Breakout"] == (1.7, 30.5) and suite.REFERENCE_SCORES["Pong"] == (-20.7, 14.6)


@pytest.mark.parametrize("n", range(1, 11))
def test_iqm_is_rliables_trimmed_mean(n):
    from scipy.stats import trim_mean

    x = np.random.default_rng(n).normal(size=n)
    assert suite.iqm(x) == pytest.approx(trim_mean(x, 0.25))


def test_games_are_found_with_or_without_v5_in_any_case():
    assert suite.resolve_games("atari5") == ["BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert"]
    assert suite.resolve_games("pong, Breakout-v5,PONG-v5,qbert") == ["Pong", "Breakout", "Qbert"]
    with pytest.raises(ValueError, match="'Breakuot' is not one of EnvPool's Atari games. Did you mean: Breakout"):
        suite.resolve_games("Pong,Breakuot")


@pytest.mark.parametrize("argv, message", [
    (["--games", "Pong", "--steps", "100", "--minutes", "1"], "give --steps or --minutes, not both"),
    (["--games", "Pong"], "give a budget per game: --steps N (agent steps) or --minutes M"),
    (["--games", "Pong,Qbret", "--steps", "100"], "'Qbret' is not one of EnvPool's Atari games. Did you mean: Qbert"),
    (["--games", "CartPole-v1", "--steps", "100"], "'CartPole-v1' is not one of EnvPool's Atari games"),
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--minutes", "-1"], "--minutes must be positive"),
    (["--steps", "100", "--env-id", "Pong-v5"], "--env-id is set by the suite for each game: --games names the games"),
    (["--steps", "100", "--total-steps", "5"], "--total-steps is set by the suite for each game: use --steps"),
    (["--steps", "100", "--lr", "-1"], "--lr must be >= 0"),
])
def test_bad_input_is_one_line_before_any_training(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("fastdqn.train.train", lambda *a, **k: pytest.fail("trained"))
    out = tmp_path / "suite"
    assert main(["suite", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_a_suite_of_two_games_reports_hns_and_a_rerun_skips_or_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "suite"
    assert main(["suite", "--steps", "1000", "--out", str(out), *TINY]) == 0
    said = capsys.readouterr().out
    assert "[1/2] Pong: training in" in said and "[2/2] Breakout: done, total_steps reached" in said

    report = json.loads((out / "suite.json").read_text())
    scores = {}
    for game in ("Pong", "Breakout"):
        summary = json.loads((out / game / "summary.json").read_text())
        assert summary["agent_steps"] == 1000 and summary["config"]["env"]["env_id"] == f"{game}-v5"
        scores[game] = summary["eval_mean_return"]
    expected = suite.score_table(scores)
    assert [row["game"] for row in report["games"]] == ["Pong", "Breakout"]
    assert [row["hns"] for row in report["games"]] == [row["hns"] for row in expected["games"]]
    assert report["median_hns"] == expected["median_hns"] and report["iqm_hns"] == expected["iqm_hns"]
    assert report["protocol"] == "v4" and report["budget"]["total_steps"] == 1000
    assert report["machine"]["cpu"] and "DQN Zoo" in report["reference_scores"]
    table = (out / "suite.md").read_text()
    pong = next(row for row in report["games"] if row["game"] == "Pong")
    assert f"| Pong | {pong['score']:,.1f} | -20.7 | 14.6 | {pong['hns']:,.3f} | 1,000 |" in table
    assert "Median HNS" in table and "IQM HNS" in table
    for png in ("suite.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # the same command again: both games finished, nothing trains, the report is written again
    before = {game: (out / game / "summary.json").stat().st_mtime_ns for game in ("Pong", "Breakout")}
    monkeypatch.setattr("fastdqn.train.train", lambda *a, **k: pytest.fail("a finished game trained again"))
    (out / "suite.json").unlink()
    assert main(["suite", "--steps", "1000", "--out", str(out), *TINY]) == 0
    said = capsys.readouterr().out
    assert "[1/2] Pong: skipped, finished before" in said and "[2/2] Breakout: skipped, finished before" in said
    assert {game: (out / game / "summary.json").stat().st_mtime_ns for game in before} == before
    assert json.loads((out / "suite.json").read_text())["games"] == report["games"]

    # an interrupted game resumes from its checkpoint; the finished one is skipped
    path = out / "Breakout" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "stop_reason": "interrupted"}))
    trained = []

    def resumed_train(cfg, progress=True):
        trained.append(cfg)
        return {**json.loads(path.read_text()), "stop_reason": "total_steps reached"}

    monkeypatch.setattr("fastdqn.train.train", resumed_train)
    assert main(["suite", "--steps", "1000", "--out", str(out), *TINY]) == 0
    assert "[2/2] Breakout: resuming its interrupted run" in capsys.readouterr().out
    assert [(cfg.resume, cfg.run_dir, cfg.env.env_id) for cfg in trained] == [
        (True, str(out / "Breakout"), "Breakout-v5")]

    # another budget or protocol in the same directory would mix two settings in one table
    assert main(["suite", "--steps", "2000", "--out", str(out), *TINY]) == 2
    assert "Pong was trained with budget 1,000 agent steps per game, this suite asks for 2,000" in capsys.readouterr().err
    assert main(["suite", "--steps", "1000", "--protocol", "machado", "--out", str(out), *TINY]) == 2
    assert "Pong was trained with --protocol v4, this suite asks for machado" in capsys.readouterr().err
