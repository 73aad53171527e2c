"""What the on-policy agents (A2C, PQN) share: the torso of their networks, the optimizer, the
precision, the learning-rate hook and the checkpoint state. Each agent adds its heads, its acting
rule and ``learn(batch)`` on a full rollout (fastdqn.rollout.RolloutStore.batch).

Torsos: an MLP of two ``hidden``-wide layers for vector observations; for stacked Atari frames the
conv layers of networks.TORSOS (Nature 2015 or NIPS 2013) and one fc layer of ``hidden`` units,
uint8 in and /255 inside (networks.scale_pixels), as the Q-networks. ``layer_norm`` puts a LayerNorm before each ReLU
(PQN's network, Gallici et al. 2024: over (C, H, W) after a conv, as in CleanRL's PQN).

Precision: "auto" resolves as for the DQN learner (hardware.resolve_precision: bf16 only for conv
nets where the hardware computes in it); the torso runs under that autocast, the heads' output
layers in fp32 (networks._exact), so logits, values, Q-values, returns and losses are fp32. The
update runs eagerly on every device (no CUDA graph yet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fastdqn import hardware
from fastdqn.networks import _RELU_GAIN, TORSOS, _init_linear, scale_pixels

__all__ = ["Torso", "OnPolicyAgent", "make_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "rmsprop", "radam", "sgd")


class Torso(nn.Module):
    """Observations -> features (B, ``hidden``): an MLP for vectors, a conv torso for stacked frames."""

    def __init__(self, obs_shape: Sequence[int], hidden: int, torso: str = "nature", layer_norm: bool = False):
        super().__init__()
        obs_shape = tuple(int(s) for s in obs_shape)
        self.pixels = len(obs_shape) == 3
        self.features = int(hidden)
        layers: list[nn.Module] = []

        def block(layer: nn.Module, norm_shape) -> None:
            layers.append(_init_linear(layer, _RELU_GAIN))
            if layer_norm:
                layers.append(nn.LayerNorm(norm_shape))
            layers.append(nn.ReLU())

        if self.pixels:
            if torso not in TORSOS:
                raise ValueError(f"torso must be one of {sorted(TORSOS)}, got {torso!r}")
            x = torch.zeros(1, *obs_shape)
            for out, kernel, stride in TORSOS[torso]:
                conv = nn.Conv2d(x.shape[1], out, kernel, stride=stride)
                x = conv(x)
                block(conv, tuple(x.shape[1:]))
            layers.append(nn.Flatten())
            block(nn.Linear(x[0].numel(), hidden), hidden)
        elif len(obs_shape) == 1:
            block(nn.Linear(obs_shape[0], hidden), hidden)
            block(nn.Linear(hidden, hidden), hidden)
        else:
            raise ValueError(f"no torso for observations of shape {obs_shape}")
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(scale_pixels(obs) if self.pixels else obs.float())


def make_optimizer(params, kind: str, lr: float, adam_eps: float) -> torch.optim.Optimizer:
    """adam / radam (eps ``adam_eps``; RAdam is CleanRL's PQN optimizer), rmsprop as A2C's (alpha
    0.99, eps 1e-5: Mnih et al. 2016, OpenAI baselines), sgd (tests)."""
    params = list(params)
    if kind == "adam":
        try:
            return torch.optim.Adam(params, lr=lr, eps=adam_eps, fused=True)
        except (RuntimeError, ValueError, TypeError):  # (no fused kernel for this device / torch)
            return torch.optim.Adam(params, lr=lr, eps=adam_eps)
    if kind == "radam":
        return torch.optim.RAdam(params, lr=lr, eps=adam_eps)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=1e-5)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")


class OnPolicyAgent:
    """One network and its optimizer. Subclasses set ``network`` and call ``_setup``."""

    cuda_graph = False  # (the loop's update groups: one update at a time)
    updates_per_graph = 1

    def _setup(self, network: nn.Module, *, optimizer: str, lr: float, adam_eps: float, max_grad_norm: float | None,
               precision: str, device, batch_size: int | None) -> None:
        self.device = torch.device(device if device is not None else "cpu")
        pixels = any(isinstance(m, nn.Conv2d) for m in network.modules())
        self.precision_choice = hardware.resolve_precision(precision, self.device, conv_net=pixels,
                                                            batch_size=batch_size)
        self.precision = self.precision_choice.name
        self.network = network.to(self.device)
        self._params = list(self.network.parameters())
        self.optimizer = make_optimizer(self._params, optimizer, lr, adam_eps)
        self.max_grad_norm = max_grad_norm or None
        self.num_updates = 0

    def autocast(self):
        return hardware.autocast(self.device, self.precision)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)
        self.optimizer.step()
        self.num_updates += 1

    def _tensors(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The rollout's arrays on the device (obs keep their dtype: uint8 frames cross as bytes)."""
        return {name: torch.as_tensor(value).to(self.device, non_blocking=True) for name, value in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "num_updates": self.num_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """The network and the optimizer's state; the optimizer keeps this agent's settings (a
        resume's --lr, say)."""
        self.network.load_state_dict(state["network"])
        own = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, own):
            group.update(settings)
        self.num_updates = int(state["num_updates"])
