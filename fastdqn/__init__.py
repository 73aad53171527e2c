"""fastdqn: a fast, vectorized DQN-family trainer for Atari (EnvPool + Numba replay + PyTorch)."""

__version__ = "0.2.0"
