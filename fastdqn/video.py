"""Videos of evaluation games: an MP4 in the game's own RGB frames at real speed, a short GIF
preview of it for TensorBoard, and the small grey GIF of the agent's 84x84 view for READMEs.

The MP4 needs imageio's ffmpeg plugin (pip install 'fastdqn[video]'): its wheel ships an ffmpeg
binary of its own, so nothing else needs installing. Frames are streamed to the encoder as they
come (a long Atari game is thousands of frames); only the preview is kept in memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fastdqn.envs import EnvConfig, is_atari
from fastdqn.extras import require

ATARI_FRAMES_PER_SECOND = 60  # the emulator's frame rate
PREVIEW_SECONDS = 30  # TensorBoard / W&B previews: the first half minute of the game


def real_time_fps(env_cfg: EnvConfig) -> float:
    """Agent steps per second of real game time (one recorded frame per agent step)."""
    if is_atari(env_cfg.env_id):
        return ATARI_FRAMES_PER_SECOND / env_cfg.frame_skip
    try:  # classic control: the rate gymnasium renders the same task at (CartPole 50, Acrobot 15, ...)
        import gymnasium
        from gymnasium.envs.registration import load_env_creator

        return float(load_env_creator(gymnasium.spec(env_cfg.env_id).entry_point).metadata["render_fps"])
    except Exception:
        return 30.0


def require_encoder() -> None:
    require("imageio_ffmpeg", "video", "MP4 video (--capture-video, --video)")


class GameRecorder:
    """Streams RGB frames (H, W, 3) to an MP4 at ``fps`` and keeps the first PREVIEW_SECONDS."""

    def __init__(self, path: str | Path, fps: float):
        require_encoder()
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        # macro_block_size=2: H.264 needs even sizes; Atari's 210x160 and CartPole's 400x600 are,
        # so no frame is rescaled.
        self._writer = imageio.get_writer(self.path, fps=fps, codec="libx264", macro_block_size=2,
                                          ffmpeg_log_level="error")
        self.frames = 0
        self.preview: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        self._writer.append_data(frame)
        self.frames += 1
        if len(self.preview) < PREVIEW_SECONDS * self.fps:
            self.preview.append(frame)

    def close(self) -> None:
        self._writer.close()


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of a video (T, H, W, 3) and its frame rate."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(path)
    try:
        return np.stack([frame for frame in reader.iter_data()]), float(reader.get_meta_data()["fps"])
    finally:
        reader.close()


def gif_bytes(frames: list[np.ndarray], fps: float, scale: int = 1) -> bytes:
    import imageio.v2 as imageio

    if scale > 1:
        frames = [np.kron(f, np.ones((scale, scale) + (1,) * (f.ndim - 2), np.uint8)) for f in frames]
    buffer = io.BytesIO()
    imageio.mimsave(buffer, frames, format="GIF", duration=1000 / fps, loop=0)
    return buffer.getvalue()


def write_gif(path: str | Path, frames: list[np.ndarray], scale: int = 2, fps: int = 30) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(gif_bytes(frames, fps, scale))


def add_to_tensorboard(writer, tag: str, frames: list[np.ndarray], fps: float, step: int) -> None:
    """An animated GIF in TensorBoard's Images tab: what SummaryWriter.add_video writes, without
    the moviepy it would need."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    height, width = frames[0].shape[:2]
    image = Summary.Image(height=height, width=width, colorspace=frames[0].shape[2] if frames[0].ndim == 3 else 1,
                          encoded_image_string=gif_bytes(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
