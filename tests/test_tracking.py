"""--track: a W&B run (offline, no network) holds the config and the TensorBoard scalars; without
wandb installed --track fails in one line; nothing optional is imported unless asked for."""

import struct
import subprocess
import sys

import pytest

from fastdqn.config import make_config
from fastdqn.train import train

pytest.importorskip("wandb")


def read_wandb_records(path):
    """The records of an offline W&B run file: a ':W&B' header (7 bytes), then LevelDB-log chunks
    (crc32, length, type) in 32 KiB blocks, each whole record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_offline_wandb_run_holds_the_config_and_the_tensorboard_scalars(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_config("cartpole", run_dir=str(tmp_path / "run"), total_steps=1200, learning_starts=300,
                      eval_interval=600, eval_episodes=2, log_interval=400, checkpoint_interval=0, track=True,
                      wandb_project="fastdqn-test")
    summary = train(cfg, progress=False)
    (run_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    records = read_wandb_records(run_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: item.value_json for item in run.config.update}
    assert run.project == "fastdqn-test" and run.display_name == "run" and run.run_id == summary["wandb_run_id"]
    assert '"CartPole-v1"' in config["env"] and config["total_steps"] == "1200"
    logged = [{item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
              for r in records if r.WhichOneof("record_type") == "history"]
    evals = [(int(row["global_step"]), float(row["eval/mean_return"])) for row in logged if "eval/mean_return" in row]
    assert evals == [(e["agent_steps"], e["mean_return"]) for e in summary["evals"]]
    keys = set().union(*logged)
    for tag in ("charts/episodic_return", "charts/SPS", "charts/epsilon", "losses/td_loss", "replay/fill"):
        assert tag in keys


def run_cli(*args, block=()):
    """fastdqn in a fresh interpreter, with the modules in ``block`` made unimportable."""
    code = ("import sys; [sys.modules.__setitem__(m, None) for m in sys.argv[1].split(',') if m]; "
            "from fastdqn.cli import main; sys.exit(main(sys.argv[2:]))")
    return subprocess.run([sys.executable, "-c", code, ",".join(block), *args], capture_output=True, text=True,
                          timeout=120)


def test_track_without_wandb_says_what_to_install(tmp_path):
    out = run_cli("train", "--preset", "cartpole", "--track", "--run-dir", str(tmp_path / "r"), block=["wandb"])
    assert out.returncode == 2
    assert out.stderr.strip() == "error: --track (Weights & Biases) needs wandb: pip install 'fastdqn[track]'"
    assert not (tmp_path / "r").exists()


def test_optional_extras_are_not_imported_unless_asked_for():
    code = ("import sys, fastdqn.cli, fastdqn.train, fastdqn.hub, fastdqn.tracking, fastdqn.video; "
            "print(sorted(m for m in ('wandb', 'huggingface_hub', 'safetensors', 'imageio_ffmpeg') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
