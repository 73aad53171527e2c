"""Evaluation videos: MP4s in the game's RGB frames at real speed, the same games as unrecorded."""

import numpy as np
import pytest
import torch

from fastdqn.envs import EnvConfig
from fastdqn.evaluate import evaluate
from fastdqn.networks import make_q_network
from fastdqn.video import GameRecorder, read_video, real_time_fps

pytest.importorskip("imageio_ffmpeg")


def test_recorded_game_is_the_whole_first_game_in_rgb_at_real_speed(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    q_network = make_q_network((4,), 2, dueling=False, hidden=(16,))
    env_cfg = EnvConfig(env_id="CartPole-v1", num_envs=2)
    play = dict(episodes=3, epsilon=0.3, max_steps=500, device=torch.device("cpu"), seed=6)
    recorder = GameRecorder(tmp_path / "game.mp4", real_time_fps(env_cfg))
    recorded = evaluate(q_network, env_cfg, recorder=recorder, **play)
    recorder.close()
    frames, fps = read_video(tmp_path / "game.mp4")
    assert recorded["returns"][0] < max(recorded["returns"])  # env 0 plays on after its first game
    # CartPole scores 1 per step: the reset frame, then one frame per step to the last one
    assert len(frames) == recorded["returns"][0] + 1 == recorder.frames
    assert frames.shape[1:] == (400, 600, 3) and fps == 50  # gymnasium renders CartPole at 50 fps
    assert (frames[..., 0] != frames[..., 2]).any()  # colour, not grey
    assert evaluate(q_network, env_cfg, **play)["returns"] == recorded["returns"]  # rendering changes nothing


def test_atari_frames_are_the_screen_in_rgb_at_60_fps_over_the_frame_skip(tmp_path):
    # without episodic life, so that a lost life adds no reset step (with it, each lost life's
    # reset is one more recorded frame: the screen as the next life starts)
    env_cfg = EnvConfig(env_id="Breakout-v5", num_envs=1, episodic_life=False)
    assert real_time_fps(env_cfg) == 15
    q_network = make_q_network((4, 84, 84), 4, dueling=False, hidden=32)
    recorder = GameRecorder(tmp_path / "b.mp4", real_time_fps(env_cfg))
    evaluate(q_network, env_cfg, episodes=1, epsilon=1.0, max_steps=60, device=torch.device("cpu"), seed=1,
             recorder=recorder)
    recorder.close()
    frames, fps = read_video(tmp_path / "b.mp4")
    assert frames.shape == (61, 210, 160, 3) and fps == 15  # a 60-step game cut by max_steps


def test_training_records_every_evaluation_in_the_run_dir_and_tensorboard(cartpole_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    videos = sorted((cartpole_run / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["eval-step000001500.mp4"]  # eval_interval 0: the final one
    acc = EventAccumulator(str(cartpole_run), size_guidance={"images": 0})
    acc.Reload()
    (image,) = acc.Images("eval/video")
    assert image.step == 1500 and image.encoded_image_string[:6] == b"GIF89a"
    assert (image.height, image.width) == (400, 600)
    frames, _ = read_video(videos[0])
    assert np.asarray(frames).ndim == 4
