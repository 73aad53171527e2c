"""Q-networks: a CNN for stacked Atari frames (the Nature torso, or the lighter one of the
2013 NIPS paper) and an MLP for vector observations.

Both are a *torso* (features) followed by a *head* (Q-values). The head is either plain
(one hidden layer, then one output per action) or dueling (Wang et al., 2016): the
hidden layer is duplicated into a value stream V(s) and an advantage stream A(s, a),
combined as Q = V + A - mean_a A, so that mean_a Q == V exactly. A distributional head
(C51's atoms, QR-DQN's quantiles) has N outputs per action instead of one; ``forward``
still gives Q-values, ``outputs`` the (B, A, N) that the learner's losses read (QHead).

Precision: under bf16 autocast the torso and the head's hidden layer run in bf16, but the
head's output layer(s) and the dueling combination run in fp32 on the (upcast) hidden
features, so Q-values come out fp32. bf16 keeps ~8 significant bits: at Q ~ 10 its spacing
is 0.0625, which would round most action gaps to ties (and argmax breaks ties toward
action 0); computed in fp32 the gaps survive, and the output layers are tiny (hidden x A).

Initialisation (both networks): orthogonal weights with gain sqrt(2) for every layer that
feeds a ReLU, gain 1 for the output layers, zero biases. Orthogonal init keeps the
activation scale steady through the stack for any width, which is why most modern
value-based Atari agents (PQN, CleanRL's PPO/PQN, Dopamine-style JAX agents) use it.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Sequence

import numba
import numpy as np
import torch
from torch import nn

__all__ = ["TORSOS", "HEADS", "NatureCNN", "MLP", "QHead", "make_q_network", "cast_trunk", "channels_last",
           "scale_pixels"]

_RELU_GAIN = math.sqrt(2.0)
# torch >= 2.4 asks "is autocast on, and in which dtype" per device type; older versions
# just take the fp32 route (same result, one more cast).
_DEVICE_AUTOCAST_API = hasattr(torch, "get_autocast_dtype")


def _init_linear(layer: nn.Linear | nn.Conv2d, gain: float) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


def _exact(output_layer: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    """``output_layer(hidden)`` in fp32 even under autocast (see the module docstring)."""
    with torch.autocast(hidden.device.type, enabled=False):  # (.float() of fp32: a no-op)
        return output_layer(hidden.float())


HEADS = ("scalar", "c51", "qr")
DEFAULT_ATOMS = {"scalar": 1, "c51": 51, "qr": 200}  # C51's 51 atoms, QR-DQN's 200 quantiles


class QHead(nn.Module):
    """Features -> Q-values ``hidden`` units then the outputs, one stream or dueling.

    ``head`` picks what the outputs are, N per action (``outputs``: (B, A, N), fp32):
      scalar  N = 1: Q(s, a) itself (DQN)
      c51     N atoms' logits of a distribution on the fixed support linspace(v_min, v_max, N)
              (Bellemare et al. 2017); Q = sum_j softmax(logits)_j z_j
      qr      N quantiles at the midpoints (2i + 1) / 2N (Dabney et al. 2018); Q = their mean
    ``forward`` gives Q (B, A) for every head, so acting and evaluation never ask which one runs.
    Dueling combines per output: V (B, 1, N) + A (B, A, N) - mean_a A.

    Each stream is ``Sequential(Linear, ReLU, Linear)``; the last Linear, the dueling
    combination and Q always run in fp32 (:func:`_exact`), under autocast too.
    """

    def __init__(self, in_features: int, hidden: int, num_actions: int, dueling: bool = False,
                 head: str = "scalar", num_atoms: int | None = None, v_min: float = -10.0, v_max: float = 10.0):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        num_atoms = num_atoms or DEFAULT_ATOMS[head]
        if head == "scalar" and num_atoms != 1:
            raise ValueError(f"a scalar head has one output per action, got num_atoms={num_atoms}")
        if head != "scalar" and num_atoms < 2:
            raise ValueError(f"a {head} head needs at least 2 atoms, got {num_atoms}")
        if head == "c51" and not v_min < v_max:
            raise ValueError(f"the c51 support needs v_min < v_max, got [{v_min}, {v_max}]")
        self.dueling = dueling
        self.head = head
        self.num_actions = num_actions
        self.num_atoms = num_atoms

        def stream(out: int) -> nn.Sequential:
            return nn.Sequential(
                _init_linear(nn.Linear(in_features, hidden), _RELU_GAIN),
                nn.ReLU(),
                _init_linear(nn.Linear(hidden, out), 1.0),
            )

        if dueling:
            self.value = stream(num_atoms)
            self.advantage = stream(num_actions * num_atoms)
        else:
            self.q = stream(num_actions * num_atoms)
        if head == "c51":
            self.register_buffer("support", torch.linspace(v_min, v_max, num_atoms))

    def output_layers(self) -> list[nn.Linear]:
        """The layers that stay fp32 (see the module docstring)."""
        streams = (self.value, self.advantage) if self.dueling else (self.q,)
        return [stream[2] for stream in streams]

    @staticmethod
    def _stream(stream: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
        return _exact(stream[2], stream[1](stream[0](features)))

    def outputs(self, features: torch.Tensor) -> torch.Tensor:
        """(B, A, N) fp32: Q-values (N = 1), atom logits (c51) or quantiles (qr)."""
        shape = (features.shape[0], self.num_actions, self.num_atoms)
        if not self.dueling:
            return self._stream(self.q, features).view(shape)
        advantage = self._stream(self.advantage, features).view(shape)  # fp32, and so is all that follows
        value = self._stream(self.value, features).view(shape[0], 1, shape[2])
        return value + advantage - advantage.mean(dim=1, keepdim=True)

    def q_values(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, A, N) outputs -> (B, A) Q-values: the value itself, the mean under the atoms'
        distribution, or the quantiles' mean. The greedy action is the argmax of these."""
        if self.head == "c51":
            return (outputs.softmax(dim=-1) * self.support).sum(dim=-1)
        if self.head == "qr":
            return outputs.mean(dim=-1)
        return outputs.squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.q_values(self.outputs(features))


@numba.njit(cache=True, nogil=True)
def _interleave4(planes, pixels):
    """pixels[b, p] = the bytes planes[b, 0..3, p] packed into one uint32, channel c in byte c.

    In little-endian memory that is the (B, H*W, 4) channels_last byte order, written one
    pixel (4 bytes) at a time: a loop the compiler vectorizes, where a byte-by-byte transpose
    does not vectorize.
    """
    for b in range(planes.shape[0]):
        for p in range(planes.shape[2]):
            pixels[b, p] = (np.uint32(planes[b, 0, p]) | (np.uint32(planes[b, 1, p]) << 8)
                            | (np.uint32(planes[b, 2, p]) << 16) | (np.uint32(planes[b, 3, p]) << 24))


def channels_last(obs: torch.Tensor) -> torch.Tensor:
    """``obs.contiguous(memory_format=torch.channels_last)``, the same bytes in the same layout.

    Stacks of 4 uint8 frames on a little-endian CPU, the learner's batches and the actor's
    observations, are reordered by :func:`_interleave4`: ~0.1-0.2 ms for (64, 4, 84, 84) where
    torch's generic strided copy takes ~1 ms (2-core AMD EPYC, AVX2 cap; see
    `fastdqn bench learner --reorder`). Anything else goes to torch.
    """
    if obs.is_contiguous(memory_format=torch.channels_last):
        return obs
    packable = (obs.dim() == 4 and obs.shape[1] == 4 and obs.dtype == torch.uint8 and obs.device.type == "cpu"
                and sys.byteorder == "little" and obs.stride(3) == 1 and obs.stride(2) == obs.shape[3])
    if not packable:
        return obs.contiguous(memory_format=torch.channels_last)
    b, c, h, w = obs.shape
    out = torch.empty((b, h, w, c), dtype=torch.uint8)
    # (B, C, H, W) -> (B, C, H*W) is a view (rows are contiguous), also of a strided batch.
    _interleave4(obs.numpy().reshape(b, c, h * w), out.numpy().view(np.uint32).reshape(b, h * w))
    return out.permute(0, 3, 1, 2)


# Conv torsos for 84x84 frames, as (out_channels, kernel, stride) per layer. "nips" is the
# network of Mnih et al. (2013), about a third of the Nature torso's arithmetic per frame
# (their fc layer had 256 units: pass hidden=256 for the whole 2013 network).
TORSOS = {
    "nature": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
    "nips": ((16, 8, 4), (32, 4, 2)),
}


def scale_pixels(obs: torch.Tensor, channels_last_input: bool = False) -> torch.Tensor:
    """Pixels (uint8, 0..255) -> a conv torso's input, /255 in the autocast dtype (else fp32).

    Under autocast the bytes go straight to the autocast dtype (0..255 are exact in bf16) and
    are divided there: one rounding, the one the fp32 path makes when the conv casts its input,
    without an fp32 copy of the batch (at batch 256, 29 MB written and read again). With
    ``channels_last_input`` (weights made torch.channels_last) the bytes are reordered before
    the cast (4x less to move), so every conv runs channels_last with no reorder of its own.
    """
    device_type = obs.device.type
    dtype = torch.float32
    if _DEVICE_AUTOCAST_API and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    if channels_last_input:
        obs = channels_last(obs)
    x = obs.to(dtype)
    return x.div_(255.0) if x is not obs else x / 255.0  # never scale the caller's tensor


class NatureCNN(nn.Module):
    """Mnih et al. (2015): conv 32x8x8/4, 64x4x4/2, 64x3x3/1, fc ``hidden`` (512), Q per action;
    ``torso="nips"`` swaps in the 2013 paper's convs (16x8x8/4, 32x4x4/2), see TORSOS.

    Input: raw pixels (B, C, 84, 84), normally uint8 in [0, 255]; the /255 scaling happens
    here (scale_pixels) so the replay and the actor can keep frames as bytes. The learner runs
    it channels_last on the CPU for fp32 (see learner.py).
    """

    def __init__(self, num_actions: int, in_channels: int = 4, hidden: int = 512,
                 dueling: bool = False, frame_size: int = 84, torso: str = "nature", **head):
        super().__init__()
        if torso not in TORSOS:
            raise ValueError(f"torso must be one of {sorted(TORSOS)}, got {torso!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for out, kernel, stride in TORSOS[torso]:
            layers += [_init_linear(nn.Conv2d(channels, out, kernel, stride=stride), _RELU_GAIN), nn.ReLU()]
            channels = out
        self.torso = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            n_features = self.torso(torch.zeros(1, in_channels, frame_size, frame_size)).shape[1]
        self.head = QHead(n_features, hidden, num_actions, dueling, **head)

    def scale(self, obs: torch.Tensor) -> torch.Tensor:
        """Pixels -> the torso's input (scale_pixels, in the weights' memory format).
        forward(obs) is forward(scale(obs), scaled=True); the learner scales s' once for both
        of its networks."""
        return scale_pixels(obs, self.torso[0].weight.is_contiguous(memory_format=torch.channels_last))

    def forward(self, obs: torch.Tensor, scaled: bool = False) -> torch.Tensor:
        return self.head(self.torso(obs if scaled else self.scale(obs)))

    def outputs(self, obs: torch.Tensor, scaled: bool = False) -> torch.Tensor:
        """The head's (B, A, N) outputs (QHead.outputs); forward is head.q_values of these."""
        return self.head.outputs(self.torso(obs if scaled else self.scale(obs)))


class MLP(nn.Module):
    """Vector observations (B, D) -> Q-values, hidden layers ``hidden`` with ReLU.

    The last hidden layer belongs to the head (duplicated per stream when dueling); the
    others form the torso. Inputs are used as given (cast to float), not rescaled.
    """

    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int] = (128, 128),
                 dueling: bool = False, **head):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer")
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden[:-1]:
            layers += [_init_linear(nn.Linear(width, h), _RELU_GAIN), nn.ReLU()]
            width = h
        self.torso = nn.Sequential(*layers)
        self.head = QHead(width, hidden[-1], num_actions, dueling, **head)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(obs.float()))

    def outputs(self, obs: torch.Tensor) -> torch.Tensor:
        """The head's (B, A, N) outputs (QHead.outputs); forward is head.q_values of these."""
        return self.head.outputs(self.torso(obs.float()))


def make_q_network(obs_shape: Sequence[int], num_actions: int, *, dueling: bool = False,
                   hidden: int | Sequence[int] | None = None, torso: str = "nature", head: str = "scalar",
                   num_atoms: int | None = None, v_min: float = -10.0, v_max: float = 10.0) -> nn.Module:
    """Pick the network for an observation shape (without the batch dimension).

    3-D ``(C, H, W)`` -> :class:`NatureCNN` (``hidden``: fc width, default 512; ``torso``:
    a key of TORSOS; square frames). 1-D ``(D,)`` -> :class:`MLP` (``hidden``: layer widths, default (128, 128)).
    ``head``, ``num_atoms`` (0 or None: the head's published size), ``v_min``, ``v_max``: see QHead.
    """
    head_options = dict(head=head, num_atoms=num_atoms or None, v_min=v_min, v_max=v_max)
    obs_shape = tuple(int(s) for s in obs_shape)
    if len(obs_shape) == 3:
        channels, height, width = obs_shape
        if height != width:
            raise ValueError(f"NatureCNN expects square frames, got {obs_shape}")
        if hidden is None:
            hidden = 512
        if not isinstance(hidden, int):
            raise TypeError("for a CNN, hidden is the width of the fc layer (an int)")
        return NatureCNN(num_actions, channels, hidden, dueling, frame_size=height, torso=torso, **head_options)
    if len(obs_shape) == 1:
        if hidden is None:
            hidden = (128, 128)
        elif isinstance(hidden, int):
            hidden = (hidden,)
        return MLP(obs_shape[0], num_actions, hidden, dueling, **head_options)
    raise ValueError(f"no Q-network for observations of shape {obs_shape}")


def cast_trunk(q_network: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``q_network`` in ``dtype``, but for the head's output layers (kept fp32).

    Under autocast it computes exactly what the fp32 network computes, minus the per-forward
    casts of its weights: autocast would round them to ``dtype`` in the same way.
    """
    cast = copy.deepcopy(q_network)
    keep = {id(layer) for module in cast.modules() if isinstance(module, QHead)
            for layer in module.output_layers()}
    for module in cast.modules():
        if id(module) not in keep and not list(module.children()):  # the leaves
            module.to(dtype)
    return cast
