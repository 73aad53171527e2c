"""The results archive: rows computed from summary.json files, README blocks rewritten from them."""

import json

import pytest

from fastdqn import results
from fastdqn.config import make_config, to_dict

ZEN3 = {"cpu": "AMD EPYC", "cpu_id": "family 25 model 1", "cores": 2, "cpu_flags": ["avx2", "fma"],
        "isa_cap": {}, "gpu": None}


def _evals(*points):
    return [{"agent_steps": s, "wall_seconds": w, "mean_return": r} for s, w, r in points]


def _write_run(folder, config, evals, note, **summary):
    folder.mkdir(parents=True)
    record = {"env_id": config["env"]["env_id"], "config": config, "evals": evals,
              "agent_steps": evals[-1]["agent_steps"], "wall_seconds": evals[-1]["wall_seconds"] + 6.0, **summary}
    (folder / "summary.json").write_text(json.dumps(record))
    (folder / "note.md").write_text(note)


@pytest.fixture
def archive(tmp_path):
    """Two runs: Breakout on the 2013-network preset with a 1M replay, seed 1 (human level at the third
    evaluation, exactly 30.5; 100 at the fifth, exactly 100.0), and CartPole without a machine record
    (its note names the CPU) reaching its target score 500."""
    root = tmp_path / "docs" / "results"
    breakout = to_dict(make_config("breakout-cpu-nips", buffer_size=1_000_000, seed=1, max_minutes=59.8))
    _write_run(root / "breakout-cpu" / "zen3-buffer1m-seed1", breakout,
               _evals((100_000, 300.0, 10.0), (200_000, 600.0, 30.4), (300_000, 930.0, 30.5),
                      (400_000, 1200.0, 99.9), (500_000, 1500.0, 100.0), (600_000, 1800.0, 80.0)),
               "date: 2026-12-05\nwhat: a 1M replay\n\nprose that is not a field: here\n",
               machine=ZEN3, protocol={"name": "v4"}, precision_used="fp32", learning_sps=333.3)
    cartpole = to_dict(make_config("cartpole"))
    _write_run(root / "cartpole" / "old-run", cartpole,
               _evals((5_000, 30.0, 120.0), (10_000, 60.0, 499.9), (15_000, 90.0, 500.0)),
               "date: 2026-11-20\ncpu: Intel(R) Xeon(R) Processor\ngeneration: Emerald Rapids\n",
               train_sps=250.0)
    (root / "gpu-check").mkdir()  # bench/gpu_check.py's summary.json is not a run
    (root / "gpu-check" / "summary.json").write_text(json.dumps({"steps": {"build": "pass"}}))
    readme = tmp_path / "README.md"
    readme.write_text("# front\n<!-- results:begin -->\nstale\n<!-- results:end -->\n"
                      "text\n<!-- performance:begin -->\n<!-- performance:end -->\n")
    return root, readme


def test_first_evaluation_at_or_above_a_score_is_the_crossing():
    evals = _evals((100, 60.0, 30.4), (200, 90.0, 30.5), (300, 150.0, 31.0))
    assert results.crossing(evals, 30.5) == (200, 1.5)
    assert results.crossing(evals, 31.5) is None
    assert results.crossing(evals, None) is None


def test_rows_are_computed_from_the_summaries(archive):
    root, _ = archive
    breakout, cartpole = sorted(results.collect(root), key=lambda r: r.env_id)
    assert breakout.folder == "breakout-cpu/zen3-buffer1m-seed1"
    assert (breakout.preset, breakout.flags) == ("breakout-cpu-nips", ["--buffer-size 1000000"])
    assert breakout.run_flags == ["--seed 1", "--max-minutes 59.8"]
    assert breakout.first == 30.5
    assert breakout.to_first == (300_000, 15.5)  # 930 s
    assert breakout.to_target == (500_000, 25.0)  # 1500 s
    assert (breakout.best, breakout.final, breakout.agent_steps) == (100.0, 80.0, 600_000)
    assert breakout.machine == "AMD EPYC Zen3"
    assert breakout.machine_long == "AMD EPYC (Zen3, family 25 model 1), 2 cores; avx2 fma"
    assert (breakout.protocol, breakout.precision, breakout.sps) == ("v4", "fp32", 333.3)
    assert (breakout.date, breakout.what) == ("2026-12-05", "a 1M replay")

    assert (cartpole.preset, cartpole.flags, cartpole.run_flags) == ("cartpole", [], [])
    assert cartpole.first == 500.0  # no human score: the preset's target score
    assert cartpole.to_first == (15_000, 1.5)
    assert cartpole.to_target is None
    assert cartpole.machine == "Intel Xeon Processor Emerald Rapids"
    assert cartpole.protocol == "not recorded"
    assert cartpole.sps == 250.0


def test_archive_and_front_page_tables(archive):
    root, readme = archive
    runs = results.collect(root)
    page = results.archive_markdown(runs)
    row = next(line for line in page.splitlines() if "zen3-buffer1m-seed1" in line)
    assert "[zen3-buffer1m-seed1](breakout-cpu/zen3-buffer1m-seed1/)" in row
    assert "| 300k / 15.5 | 500k / 25.0 | 100.0 | 80.0 (600k) |" in row
    assert "`--preset breakout-cpu-nips --buffer-size 1000000`" in row
    cartpole_row = next(line for line in page.splitlines() if "old-run" in line)
    assert "| 500: 15k / 1.5 |  |" in cartpole_row

    front = results.front_markdown(runs, link_prefix="docs/results/")
    assert "| Breakout | `--preset breakout-cpu-nips --buffer-size 1000000` | AMD EPYC Zen3, fp32 | 300k / 15.5 | " \
           "500k / 25.0 | 100.0 / 80.0 (600k) | 333 | [2026-12-05](docs/results/breakout-cpu/zen3-buffer1m-seed1/) |" \
           in front.splitlines()


def test_command_rewrites_the_archive_and_only_the_marked_blocks(archive):
    root, readme = archive
    args = ["--results", str(root), "--readme", str(readme)]
    assert results.main(args + ["--check"]) == 1  # nothing written yet
    assert not (root / "README.md").exists()
    assert results.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# front\n<!-- results:begin -->\n| game |")
    assert "stale" not in text and "\ntext\n<!-- performance:begin -->\n| machine |" in text
    assert "zen3-buffer1m-seed1" in (root / "README.md").read_text()
    assert results.main(args + ["--check"]) == 0  # now current


def test_preset_listing_reads_the_archive_and_handles_any_preset(archive):
    root, _ = archive
    runs = results.collect(root)
    lines = results.describe_preset("breakout-cpu-nips", runs)
    assert any(line.startswith("memory: replay 300,000 transitions, about 2.1 GB") for line in lines)
    known = [line for line in lines if line.startswith("known to reach")]
    assert known == ["known to reach (with --buffer-size 1000000): human level (30.5) at 300k agent steps, "
                     "minute 15.5; 100 at 500k agent steps, minute 25.0; best 100.0, final 80.0 at 600k agent "
                     "steps; AMD EPYC Zen3, fp32, 2026-12-05 (docs/results/breakout-cpu/zen3-buffer1m-seed1)"]
    assert "known to reach: no committed run yet" in results.describe_preset("breakout", runs)


def test_a_preset_added_later_is_listed_without_runs_or_purpose(archive, monkeypatch):
    from fastdqn import config

    monkeypatch.setitem(config.PRESETS, "breakout-new", dict(config.PRESETS["breakout-cpu-nips"], n_step=5))
    lines = results.describe_preset("breakout-new", results.collect(archive[0]))
    assert lines == ["memory: replay 300,000 transitions, about 2.1 GB", "known to reach: no committed run yet"]


def test_committed_tables_are_current():
    """README.md's Results and Performance blocks and docs/results/README.md match the committed runs:
    after adding a run or a bench file, `fastdqn results` rewrites them."""
    stale = [str(path) for path, text in results.outputs().items() if path.read_text() != text]
    assert not stale, f"out of date: {stale}; run `fastdqn results`"
