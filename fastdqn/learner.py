"""The DQN learner: one double-Q update per batch, eager / compiled on CPU, CUDA graph on GPU.

One update, for a batch of n-step transitions (s, a, R, gamma^m, s', w) from the replay::

    a*     = argmax_a Q_online(s', a)                (double_q=False: max over Q_target)
    y      = R + gamma^m * Q_target(s', a*)          (gamma^m = 0 at terminals: no bootstrap)
    delta  = Q_online(s, a) - y                      (y is a constant: no gradient)
    loss   = mean_i( w_i * l(delta_i) )              l: huber | mse | pseudo_huber
    clip the gradient norm, optimizer step, then the target update:
      hard (tau = 0):   theta' <- theta  after every C-th update (num_updates % C == 0)
      Polyak (tau > 0): theta' <- theta' + tau * (theta - theta')  after every update

Per-sample losses (delta = prediction - target):
    huber         0.5 delta^2 if |delta| <= 1 else |delta| - 0.5
    mse           0.5 delta^2   (the 1/2 makes all three agree near 0: gradient delta)
    pseudo_huber  sqrt(delta^2 + 1) - 1

Distributional heads (networks.QHead: N outputs per action) replace the scalar y and delta:
    a*   = argmax_a of the online net's Q(s', a), the mean of its distribution (double Q)
    c51  target distribution: the target net's p(s', a*) moved to R + gamma^m z and projected
         back onto the support z (project_onto_support); loss = cross-entropy of the online
         logits of (s, a) against it
    qr   target quantiles R + gamma^m theta'_j(s', a*); loss = the quantile Huber loss
         (kappa = 1) of the online quantiles theta_i(s, a) against them (quantile_huber_loss)
and the per-sample loss is what goes back to the replay as the priority (as in Rainbow), where
the scalar head sends |delta|. Everything after the networks' output layers runs in fp32.

Precision: "auto" (the default of the CLI) resolves to bf16 only where the hardware
computes in it (fastdqn/hardware.py), fp32 elsewhere. With bf16, the three network
forwards run under bf16 autocast up to the head's hidden layer; the head's output layers
and the dueling combination are fp32 (networks.py), so Q(s, .), both argmaxes, the target
y, delta, the loss and |TD| are fp32, as are the weights and the optimizer state.

Execution paths (same numerics, same code for the update itself):
- CPU: eager by default; ``compile=True`` wraps the loss (three forwards + loss, and so
  its backward) in torch.compile; Adam is the fused CPU kernel either way. Two process
  settings that cost nothing in numbers: fp32 conv nets run channels_last (on AVX2,
  oneDNN's weight gradient of the first conv is ~2.7x faster so), and glibc keeps freed
  blocks mapped (hardware.keep_freed_memory: no page faults on each update's fresh
  activations and gradients). bench/learner.py measures every path; docs/learner-profile.md has the
  profile before and after.
- CUDA, ``cuda_graph=True``: :meth:`Learner.update_many` captures K = updates_per_graph
  consecutive updates on K pre-sampled batches into one CUDA graph and replays it; see
  ``_capture`` for what must live in device tensors. Adam is the fused, capturable kernel;
  cuDNN picks its convolutions by timing them (``cudnn.benchmark``) unless determinism is
  asked for (``cudnn.deterministic`` or ``torch.use_deterministic_algorithms``).
- CUDA, ``cuda_graph=False``, or :meth:`Learner.update` on any device: eager.

Results are host tensors: ``update`` -> loss (), td_abs (B,), mean_q (); td_abs is the
per-sample priority (|delta|, or a distributional head's per-sample loss);
``update_many`` -> loss (K,), td_abs (K, B), mean_q (K,). On CUDA they come back in one
device->host copy per call; the caller calls ``float()``/``.numpy()`` only when it logs.
``update_many`` is ``launch`` then ``finish`` (GroupedUpdates): on the graph path ``launch``
only queues the work, so the training loop can sample the next group meanwhile
(--overlap-updates, train.ReplayLearning).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from fastdqn import hardware
from fastdqn.networks import cast_trunk

__all__ = ["Learner", "BATCH_FIELDS"]

# Keys of a replay batch (a Mapping, or an object with these attributes). ``weights`` may
# be missing or None (uniform replay): all ones.
BATCH_FIELDS = ("obs", "actions", "returns", "discounts", "next_obs", "weights")

_LOSSES = ("huber", "mse", "pseudo_huber")


def elementwise_loss(delta: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss of the TD error ``delta`` (see the module docstring)."""
    if kind == "huber":
        abs_delta = delta.abs()
        return torch.where(abs_delta <= 1.0, 0.5 * delta * delta, abs_delta - 0.5)
    if kind == "mse":
        return 0.5 * delta * delta
    if kind == "pseudo_huber":
        return torch.sqrt(delta * delta + 1.0) - 1.0
    raise ValueError(f"loss must be one of {_LOSSES}, got {kind!r}")


def project_onto_support(probs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor,
                         support: torch.Tensor) -> torch.Tensor:
    """C51's target: the distribution ``probs`` (B, N) on ``support`` (N,) moved to R + d * z and
    projected back onto the support, (B, N); each row keeps its mass.

    Each moved atom R + d z_j is clipped to [v_min, v_max] and split between its two neighbours
    on the support in proportion to its distance from each: at b = (Tz - v_min) / dz, index
    l = floor(b) gets 1 - (b - l) of it, l + 1 gets b - l. l is held at N - 2 or below, so
    that l + 1 is always an index (an atom on v_max gets b - l = 1: all of it to N - 1), and
    an atom landing on a support point gets all its mass there. Two scatter-adds on the
    device: no host sync, no data-dependent shape (safe inside a CUDA graph).
    """
    n = support.shape[0]
    v_min, v_max = support[0], support[-1]
    moved = (returns.unsqueeze(1) + discounts.unsqueeze(1) * support).clamp(v_min, v_max)
    b = ((moved - v_min) / ((v_max - v_min) / (n - 1))).clamp(0, n - 1)
    lower = b.floor().clamp(max=n - 2)
    upper_share = b - lower
    lower = lower.long()
    projected = torch.zeros_like(probs)
    projected.scatter_add_(1, lower, probs * (1.0 - upper_share))
    projected.scatter_add_(1, lower + 1, probs * upper_share)
    return projected


def quantile_huber_loss(quantiles: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """QR-DQN's per-sample loss, (B,): sum_i mean_j |tau_i - 1{u_ij < 0}| * huber(u_ij), with
    u_ij = targets_j - quantiles_i, quantiles (B, N) at the midpoints tau_i = (2i + 1) / 2N,
    targets (B, N') constants (no gradient) and kappa = 1 (huber as elementwise_loss)."""
    if targets.requires_grad:
        raise ValueError("quantile_huber_loss: the targets are constants; detach them")
    return _QuantileHuber.apply(quantiles, targets)


class _QuantileHuber(torch.autograd.Function):
    """The quantile Huber loss with its gradient computed in the same pass over the (B, N, N')
    pairs: autograd would keep and revisit half a dozen (B, N, N') intermediates, ~4x the time at
    N = 200 (fastdqn bench learner --heads qr). With c = clamp(u, -1, 1), huber(u) = c (u - c / 2)
    and its derivative is c, so d loss / d quantile_i = -mean_j w_ij c_ij."""

    @staticmethod
    def forward(ctx, quantiles, targets):
        n = quantiles.shape[1]
        taus = ((torch.arange(n, device=quantiles.device, dtype=quantiles.dtype) + 0.5) / n).view(1, n, 1)
        u = targets.unsqueeze(1) - quantiles.unsqueeze(2)  # (B, N, N'): row i = quantile i
        weight = torch.where(u < 0, 1.0 - taus, taus)
        weighted_slope = weight * u.clamp(-1.0, 1.0)
        ctx.save_for_backward(weighted_slope.mean(dim=2))
        return (weighted_slope * (u - 0.5 * u.clamp(-1.0, 1.0))).mean(dim=2).sum(dim=1)

    @staticmethod
    def backward(ctx, grad_loss):
        mean_slope, = ctx.saved_tensors
        return -grad_loss.unsqueeze(1) * mean_slope, None


def _field(batch: Any, name: str):
    return batch.get(name) if isinstance(batch, Mapping) else getattr(batch, name, None)


class _Staging:
    """Pinned host buffers and their device twins for K batches of one fixed shape.

    ``load`` copies K NumPy batches into pinned memory (plain memcpy), then each field to
    the device in one non-blocking copy; a field that is already on the device (frames
    gathered there by a device-resident replay) is copied device to device. Reusing the
    buffers is safe because every caller waits for the results of the previous call
    (which come after these copies) first.
    """

    def __init__(self, batches: Sequence[Any], device: torch.device):
        self.k = len(batches)
        self.host: dict[str, torch.Tensor] = {}
        self.dev: dict[str, torch.Tensor] = {}
        for name in BATCH_FIELDS:
            x = _as_tensor(_field(batches[0], name), name, batches[0])
            shape = (self.k, *x.shape)
            self.host[name] = torch.empty(shape, dtype=x.dtype, pin_memory=True)
            self.dev[name] = torch.empty(shape, dtype=x.dtype, device=device)
        self.batch_size = self.dev["actions"].shape[1]

    def matches(self, batches: Sequence[Any]) -> bool:
        if len(batches) != self.k:
            return False
        return all(_as_tensor(_field(batches[0], n), n, batches[0]).shape == self.host[n].shape[1:]
                   for n in ("obs", "actions"))

    def load(self, batches: Sequence[Any]) -> dict[str, torch.Tensor]:
        for name in BATCH_FIELDS:
            fields = [_as_tensor(_field(batch, name), name, batch) for batch in batches]
            if fields[0].device == self.dev[name].device:
                # Already on the device (a replay whose frames live there): a device copy
                # into the static buffer, nothing crosses the bus.
                for k, x in enumerate(fields):
                    self.dev[name][k].copy_(x)
                continue
            host = self.host[name]
            for k, x in enumerate(fields):
                host[k].copy_(x)
            self.dev[name].copy_(host, non_blocking=True)
        return self.dev


def _as_tensor(x, name: str, batch: Any) -> torch.Tensor:
    """Zero-copy view of a NumPy field as a CPU tensor, with the dtype the update needs."""
    if x is None:
        if name != "weights":
            raise KeyError(f"batch has no {name!r}")
        x = np.ones(np.shape(_field(batch, "returns")), dtype=np.float32)
    t = torch.as_tensor(x)
    if name == "actions":
        return t.long()
    if name in ("returns", "discounts", "weights"):
        return t.float()
    return t


class ResultsToHost:
    """The one device->host copy of a group's packed result rows, queued behind the updates that
    make them: ``queue`` returns at once, ``wait`` blocks until the rows are on the host. On CUDA
    through one pinned buffer and an event; on the CPU the rows are already there."""

    def __init__(self, device: torch.device):
        self._cuda = device.type == "cuda"
        self._pinned: torch.Tensor | None = None
        self._event = torch.cuda.Event() if self._cuda else None
        self._rows: torch.Tensor | None = None

    def queue(self, packed: torch.Tensor) -> None:
        if not self._cuda:
            self._rows = packed
            return
        if self._pinned is None or self._pinned.shape != packed.shape:
            self._pinned = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        self._pinned.copy_(packed, non_blocking=True)
        self._event.record()
        self._rows = self._pinned

    def wait(self) -> torch.Tensor:
        rows, self._rows = self._rows, None
        if not self._cuda:
            return rows
        self._event.synchronize()  # the rows (and so every copy queued before them) are done
        return rows.clone()  # the pinned buffer is reused by the next queue


class GroupedUpdates:
    """``update_many`` as ``launch`` then ``finish``, for a learner whose ``launch(batches)`` starts K
    updates and leaves ``self._pending``: a callable that returns their results, waiting for the
    device if it must. The training loop may call the two apart (train.UpdateGroups, overlap): on a
    CUDA graph the host samples the next group while the GPU runs this one."""

    _pending = None

    def update_many(self, batches: Sequence[Any]) -> dict[str, torch.Tensor]:
        """K consecutive updates, one per batch; host tensors (K, ...) of the learner's outputs."""
        self.launch(batches)
        return self.finish()

    def launch(self, batches: Sequence[Any]) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, torch.Tensor]:
        """The results of the last ``launch``."""
        if self._pending is None:
            raise RuntimeError("finish() without a launch() before it")
        pending, self._pending = self._pending, None
        return pending()

    def _launch_eagerly(self, batches: Sequence[Any]) -> None:
        """The updates one by one now (``update``), their results stacked for ``finish``."""
        results = [self.update(b) for b in batches]
        stacked = {key: torch.stack([r[key] for r in results]) for key in results[0]}
        self._pending = lambda: stacked

    def _check_idle(self) -> None:
        if self._pending is not None:
            raise RuntimeError("launch() again before finish() took the results of the last one")


class Learner(GroupedUpdates):
    """Owns the online and target Q-networks and the optimizer; runs the DQN update.

    Args:
        q_network: the online network (moved to ``device``); the target is a deep copy.
        lr: learning rate (change it later with :meth:`set_lr`).
        optimizer: "adam" (eps=``adam_eps``) or "rmsprop" (Nature-DQN style: alpha 0.95,
            eps 0.01, centered).
        loss: "huber" (default), "mse" or "pseudo_huber".
        max_grad_norm: clip the global gradient norm to this; None or 0 disables.
        double_q: double-DQN target (default) or the plain max over the target net.
        target_update_period: hard copy every C updates (used when tau == 0).
        tau: > 0 selects Polyak averaging every update instead of hard copies.
        precision: "auto", "fp32" or "bf16" (autocast for the trunk, fp32 master weights and
            Q-values); "auto" picks bf16 only where the hardware computes in it.
            ``precision`` holds the resolved choice, ``precision_choice`` also why.
        compile: torch.compile the loss (eager paths; a CUDA graph captures the plain code).
        cuda_graph: capture ``updates_per_graph`` updates in one CUDA graph (CUDA only).
        updates_per_graph: K, the number of batches :meth:`update_many` takes on the graph.
        device: torch device; default: the network's device.
        batch_size: the updates' batch size, if known: "auto" precision on a GPU weighs it
            (hardware.resolve_precision).
    """

    def __init__(self, q_network: nn.Module, *, lr: float = 1e-4, optimizer: str = "adam",
                 adam_eps: float = 1.5e-4, loss: str = "huber",
                 max_grad_norm: float | None = 10.0, double_q: bool = True,
                 target_update_period: int = 8000, tau: float = 0.0, precision: str = "auto",
                 compile: bool = False, cuda_graph: bool = False, updates_per_graph: int = 4,
                 device: str | torch.device | None = None, batch_size: int | None = None):
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if tau == 0.0 and target_update_period < 1:
            raise ValueError("target_update_period must be >= 1")
        if device is None:
            device = next(q_network.parameters()).device
        self.device = torch.device(device)
        if cuda_graph and self.device.type != "cuda":
            raise ValueError("cuda_graph=True needs a CUDA device")
        if updates_per_graph < 1:
            raise ValueError("updates_per_graph must be >= 1")

        conv_net = any(isinstance(m, nn.Conv2d) for m in q_network.modules())
        self.precision_choice = hardware.resolve_precision(precision, self.device, conv_net=conv_net,
                                                            batch_size=batch_size)
        precision = self.precision_choice.name
        self.q_network = q_network.to(self.device)
        self._channels_last = self.device.type == "cpu" and conv_net and precision == "fp32"
        if self.device.type == "cpu":
            hardware.keep_freed_memory()
            if self._channels_last:
                # NatureCNN follows its weights' memory format with its input. Measured
                # (bench/learner.py, docs/learner-profile.md): fp32 on AVX2 gains (the first
                # conv's weight gradient runs ~2.7x faster); bf16 on avx512_bf16 does not.
                self.q_network.to(memory_format=torch.channels_last)
        elif self.device.type == "cuda" and not (torch.backends.cudnn.deterministic
                                                 or torch.are_deterministic_algorithms_enabled()):
            # The shapes are fixed (one batch size for updates, one for acting): cuDNN times
            # its algorithms once per shape and keeps the fastest. Not when determinism is
            # asked for, as the fastest may differ from one process to the next.
            torch.backends.cudnn.benchmark = True
        self.target_network = copy.deepcopy(self.q_network).requires_grad_(False)
        self.loss_kind = loss
        self.max_grad_norm = max_grad_norm or None
        self.double_q = double_q
        self.target_update_period = int(target_update_period)
        self.tau = float(tau)
        self.precision = precision
        self.cuda_graph = cuda_graph
        self.updates_per_graph = int(updates_per_graph)
        self.num_updates = 0  # host count, exact: each update / graph replay adds 1 / K
        self._is_cuda = self.device.type == "cuda"
        # The same count on the device, for code inside a CUDA graph (see _capture).
        self._num_updates_t = torch.zeros((), dtype=torch.int64, device=self.device)

        self._params = [p for p in self.q_network.parameters()]
        self._online_tensors = self._params + list(self.q_network.buffers())
        self._target_tensors = (list(self.target_network.parameters())
                                + list(self.target_network.buffers()))
        self.optimizer = self._make_optimizer(optimizer, lr, adam_eps)
        # CPU, bf16, hard updates: the target's weights change once per C updates, yet
        # autocast would cast them to bf16 on every forward (~1 ms at batch 32 for the fc
        # layer alone, a memory-bound pass). Keep them cast: a bf16 copy, refreshed at
        # each sync. Identical numbers: the same fp32 -> bf16 rounding, done once.
        self._target_bf16: nn.Module | None = None
        if precision == "bf16" and self.tau == 0.0 and not self._is_cuda:
            self._target_bf16 = cast_trunk(self.target_network, torch.bfloat16)

        # What the head's outputs are (networks.QHead): scalar Q, c51 atoms or qr quantiles.
        head = getattr(self.q_network, "head", None)
        self.head = getattr(head, "head", "scalar")
        self._plain_loss = self._td_loss if self.head == "scalar" else self._distributional_loss
        self._loss_fn = self._plain_loss
        if compile:
            self._loss_fn = torch.compile(self._plain_loss)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_staging: _Staging | None = None
        self._eager_staging: _Staging | None = None
        self._results = ResultsToHost(self.device)

    # ----------------------------------------------------------------------------- set-up

    def _make_optimizer(self, kind: str, lr: float, adam_eps: float) -> torch.optim.Optimizer:
        # CUDA: capturable=True keeps the step count on the device and never reads it back,
        # so the same optimizer runs eagerly and inside a graph; the lr is then a device
        # tensor so that set_lr reaches a captured graph. Adam's fused kernel (a few launches
        # for all tensors, capturable too) first; RMSprop has none: foreach. CPU: the fused
        # kernel (one pass over each tensor) is the fastest step there (see bench/learner.py).
        if kind not in ("adam", "rmsprop"):
            raise ValueError(f"optimizer must be 'adam' or 'rmsprop', got {kind!r}")
        if self._is_cuda:
            lr = torch.tensor(float(lr), device=self.device)
            impls = [dict(capturable=True, fused=True), dict(capturable=True, foreach=True)]
        else:
            impls = [dict(fused=True), {}]
        if kind == "rmsprop":
            impls = impls[1:]
        for impl in impls:  # in order: an older torch lacks the first (fused CPU Adam: < 2.4)
            try:
                if kind == "adam":
                    return torch.optim.Adam(self._params, lr=lr, eps=adam_eps, **impl)
                return torch.optim.RMSprop(self._params, lr=lr, alpha=0.95, eps=0.01, centered=True, **impl)
            except (RuntimeError, ValueError, TypeError):
                if impl is impls[-1]:
                    raise

    def autocast(self):
        """The precision context of this learner's forwards (also right for acting)."""
        return hardware.autocast(self.device, self.precision)

    def set_lr(self, lr: float) -> None:
        """Change the learning rate; in place on CUDA, so captured graphs see it too."""
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(float(lr))
            else:
                group["lr"] = float(lr)

    # ----------------------------------------------------------------------- the update

    def _td_loss(self, obs, actions, returns, discounts, next_obs, weights):
        """(loss, |TD| per sample, mean Q(s,a)); the forwards under autocast, the rest fp32."""
        with self.autocast():
            q_all = self.q_network(obs)
            with torch.no_grad():
                target_net = self.target_network if self._target_bf16 is None else self._target_bf16
                if self._channels_last and self.double_q:
                    # fp32 conv nets (CPU): both networks read the same s', scaled once.
                    next_x = self.q_network.scale(next_obs)
                    next_target = target_net(next_x, scaled=True)
                    next_online = self.q_network(next_x, scaled=True)
                else:
                    next_target = target_net(next_obs)
                    next_online = self.q_network(next_obs) if self.double_q else None
        q = q_all.float().gather(1, actions.unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            next_target = next_target.float()
            if self.double_q:
                best = next_online.float().argmax(dim=1, keepdim=True)
                next_value = next_target.gather(1, best).squeeze(1)
            else:
                next_value = next_target.max(dim=1).values
            td_target = returns + discounts * next_value
        delta = q - td_target
        loss = (weights * elementwise_loss(delta, self.loss_kind)).mean()
        return loss, delta.detach().abs(), q.detach().mean()

    def _distributional_loss(self, obs, actions, returns, discounts, next_obs, weights):
        """_td_loss for a c51 or qr head: (loss, per-sample loss as the priority, mean Q(s,a))."""
        online = self.q_network
        with self.autocast():
            outputs = online.outputs(obs)
            with torch.no_grad():
                target_net = self.target_network if self._target_bf16 is None else self._target_bf16
                if self._channels_last and self.double_q:
                    next_x = online.scale(next_obs)  # scaled once, read by both networks
                    next_target = target_net.outputs(next_x, scaled=True)
                    next_online = online.outputs(next_x, scaled=True)
                else:
                    next_target = target_net.outputs(next_obs)
                    next_online = online.outputs(next_obs) if self.double_q else None
        head = online.head
        n = outputs.shape[2]
        # (B, N): the outputs of the action taken, and of a* at s' (gather, no boolean indexing)
        taken = outputs.float().gather(1, actions.view(-1, 1, 1).expand(-1, 1, n)).squeeze(1)
        with torch.no_grad():
            next_target = next_target.float()
            chooser = next_online.float() if self.double_q else next_target
            best = head.q_values(chooser).argmax(dim=1)
            next_outputs = next_target.gather(1, best.view(-1, 1, 1).expand(-1, 1, n)).squeeze(1)
        if self.head == "c51":
            with torch.no_grad():
                target_probs = project_onto_support(next_outputs.softmax(dim=1), returns, discounts, head.support)
            per_sample = -(target_probs * taken.log_softmax(dim=1)).sum(dim=1)
        else:
            targets = returns.unsqueeze(1) + discounts.unsqueeze(1) * next_outputs
            per_sample = quantile_huber_loss(taken, targets)
        loss = (weights * per_sample).mean()
        mean_q = head.q_values(taken.detach().unsqueeze(1)).mean()
        return loss, per_sample.detach(), mean_q

    def _train_step(self, obs, actions, returns, discounts, next_obs, weights, *, in_graph=False,
                    hard_copy=True):
        """One full update on device tensors; returns device tensors (no host sync).
        ``hard_copy=False``: the hard target copy is left to the caller (update_many)."""
        self.optimizer.zero_grad(set_to_none=True)
        # A graph already removes the launch overhead compiling would: it captures the plain
        # code (and keeps torch.compile's own machinery out of the capture).
        loss_fn = self._plain_loss if in_graph else self._loss_fn
        loss, td_abs, mean_q = loss_fn(obs, actions, returns, discounts, next_obs, weights)
        loss.backward()
        if self.max_grad_norm is not None:
            self._clip_grad_norm(in_graph)
        self.optimizer.step()
        self._num_updates_t += 1
        self._update_target(in_graph, hard_copy)
        return loss.detach(), td_abs, mean_q

    @torch.no_grad()
    def _clip_grad_norm(self, in_graph: bool) -> None:
        """grads *= min(1, max_norm / (norm + 1e-6)), norm over all parameters."""
        if self._is_cuda or in_graph:
            # All on the device, no host sync: safe inside a graph.
            nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)
            return
        # CPU: reading the norm costs nothing here, and when the factor would be exactly 1
        # (the usual case) skipping the multiply saves a pass over every gradient.
        grads = [p.grad for p in self._params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        scale = self.max_grad_norm / (norm + 1e-6)
        if scale < 1.0:
            torch._foreach_mul_(grads, scale)

    @torch.no_grad()
    def _update_target(self, in_graph: bool, hard_copy: bool = True) -> None:
        if self.tau > 0.0:
            # theta' + tau * (theta - theta') == (1 - tau) theta' + tau theta
            torch._foreach_lerp_(self._target_tensors, self._online_tensors, self.tau)
        elif not hard_copy:
            return  # update_many copies after the replay (see _copies_after_groups)
        elif in_graph:
            # Inside a graph the copy must be decided on the device: a Python `if` would be
            # evaluated once, at capture. torch.where selects exactly (no arithmetic).
            sync = (self._num_updates_t % self.target_update_period) == 0
            for target, online in zip(self._target_tensors, self._online_tensors):
                target.copy_(torch.where(sync, online, target))
            self._refresh_target_bf16()  # (CPU only: no bf16 copy on CUDA)
        elif (self.num_updates + 1) % self.target_update_period == 0:
            self._copy_target()

    @torch.no_grad()
    def _copy_target(self) -> None:
        for target, online in zip(self._target_tensors, self._online_tensors):
            target.copy_(online)
        self._refresh_target_bf16()

    def _copies_after_groups(self, k: int) -> bool:
        """Whether hard copies can wait for the end of a group of k updates: C a multiple of
        k, so that in groups aligned on C every copy falls after a group's last update. The
        graph then holds no copy at all (instead of a torch.where and a copy over every
        tensor at every update, for one copy in C), and update_many copies after the replay
        that reaches one. A group that is not aligned runs eagerly."""
        return self.tau == 0.0 and self.target_update_period % k == 0

    @torch.no_grad()
    def _refresh_target_bf16(self) -> None:
        if self._target_bf16 is not None:
            for cast, master in zip(self._target_bf16.state_dict().values(),
                                    self.target_network.state_dict().values()):
                cast.copy_(master)

    def compute_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, |TD| (B,), mean Q) of a batch on the device, no step; loss has its graph."""
        args = [_as_tensor(_field(batch, name), name, batch).to(self.device)
                for name in BATCH_FIELDS]
        return self._loss_fn(*args)

    def update(self, batch) -> dict[str, torch.Tensor]:
        """One eager (or compiled) update. Returns host tensors loss (), td_abs (B,), mean_q ()."""
        if self._is_cuda:
            if self._eager_staging is None or not self._eager_staging.matches([batch]):
                self._eager_staging = _Staging([batch], self.device)
            dev = self._eager_staging.load([batch])
            args = [dev[name][0] for name in BATCH_FIELDS]
        else:
            args = [_as_tensor(_field(batch, name), name, batch) for name in BATCH_FIELDS]
        loss, td_abs, mean_q = self._train_step(*args)
        self.num_updates += 1
        if not self._is_cuda:
            return {"loss": loss, "td_abs": td_abs, "mean_q": mean_q}
        self._results.queue(torch.cat([td_abs, loss.view(1), mean_q.view(1)]).unsqueeze(0))
        out = self._results.wait()
        return {"loss": out[0, -2], "td_abs": out[0, :-2], "mean_q": out[0, -1]}

    def launch(self, batches: Sequence[Any]) -> None:
        """Start K consecutive updates, one per batch; ``finish()`` returns host tensors loss (K,),
        td_abs (K, B), mean_q (K,). On the CUDA graph path the replay and the copy of its results
        are queued and this returns at once; on every other path the updates run now."""
        self._check_idle()
        batches = list(batches)
        k = len(batches)
        graph = self.cuda_graph and k == self.updates_per_graph
        if graph and self._copies_after_groups(k):
            to_copy = self.target_update_period - self.num_updates % self.target_update_period
            graph = to_copy >= k  # else a copy falls inside this group: eager (rare, exact)
        if not graph:
            self._launch_eagerly(batches)
            return
        if self._graph is None or not self._graph_staging.matches(batches):
            self._capture(batches)  # loads the batches into the static inputs itself
        else:
            self._graph_staging.load(batches)
        self._graph.replay()
        self.num_updates += k
        if self._copies_after_groups(k) and self.num_updates % self.target_update_period == 0:
            self._copy_target()
        self._results.queue(self._graph_out)  # (K, B + 2) = [|TD|..., loss, mean_q]
        self._pending = self._graph_results

    def _graph_results(self) -> dict[str, torch.Tensor]:
        out = self._results.wait()
        return {"loss": out[:, -2], "td_abs": out[:, :-2], "mean_q": out[:, -1]}

    # -------------------------------------------------------------------- the CUDA graph

    def _capture(self, batches: Sequence[Any]) -> None:
        """Capture K = len(batches) consecutive updates into one CUDA graph.

        A graph replays fixed kernels on fixed addresses, so:
        - inputs are static device buffers (``_graph_staging.dev``), refilled before each
          replay; outputs land in the static ``_graph_out``;
        - everything that changes between replays is a device tensor changed in place:
          the update counter (incremented by the graph itself), the target-sync decision
          (computed from it on the device, see _update_target, unless the copies wait for
          the ends of groups: _copies_after_groups), the Adam step count and the lr
          (capturable optimizer). A Python number read during capture is frozen forever;
        - the optimizer state must exist before capture (lazily created state would be
          allocated, and zero-filled, inside the graph on every replay), hence the warm-up.
        """
        self._graph = None
        self._graph_staging = _Staging(batches, self.device)
        static = self._graph_staging.load(batches)
        k, batch_size = len(batches), self._graph_staging.batch_size
        self._graph_out = torch.empty((k, batch_size + 2), device=self.device)

        # Warm-up on a side stream, as PyTorch requires before capture: it creates the
        # optimizer state, cuBLAS/cuDNN handles and workspaces outside the graph. It also
        # trains, so every tensor it changes is saved first and put back after.
        saved = self._snapshot()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._graph_updates(static, self._graph_out)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._restore(saved)

        # Grads set to None so that backward allocates them from the graph's private pool;
        # on replay the captured backward rewrites those same tensors.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_updates(static, self._graph_out)
        self._graph = graph
        # Capture records kernels without running them: the first replay does this call's work.

    def _graph_updates(self, static: Mapping[str, torch.Tensor], out: torch.Tensor) -> None:
        """What one graph holds: K updates on static[...][i]; results into out (K, B + 2)."""
        batch_size = out.shape[1] - 2
        hard_copy = not self._copies_after_groups(out.shape[0])
        for i in range(out.shape[0]):
            loss, td_abs, mean_q = self._train_step(
                *(static[name][i] for name in BATCH_FIELDS), in_graph=True, hard_copy=hard_copy)
            out[i, :batch_size] = td_abs
            out[i, batch_size] = loss
            out[i, batch_size + 1] = mean_q

    def _snapshot(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(tensor, saved copy) for all training state, plus a (None, None) marker when the
        optimizer has no state yet: what the warm-up creates is then reset to zeros."""
        tensors = self._online_tensors + self._target_tensors + [self._num_updates_t]
        for p in self._params:
            tensors += [v for v in self.optimizer.state.get(p, {}).values()
                        if isinstance(v, torch.Tensor)]
        saved: list = [(t, t.detach().clone()) for t in tensors]
        if not self.optimizer.state:
            saved.append((None, None))  # marker: zero whatever state the warm-up creates
        return saved

    @torch.no_grad()
    def _restore(self, saved) -> None:
        for tensor, copy_ in saved:
            if tensor is None:
                # Fresh Adam/RMSprop state is all zeros (step 0, moments 0); zeroed in place
                # so that the tensors the graph captures stay the same objects.
                for state in self.optimizer.state.values():
                    for v in state.values():
                        if isinstance(v, torch.Tensor):
                            v.zero_()
            else:
                tensor.copy_(copy_)
        self._refresh_target_bf16()

    # ------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict[str, Any]:
        opt = self.optimizer.state_dict()
        for group in opt["param_groups"]:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"] = float(group["lr"].item())
        return {
            "q_network": self.q_network.state_dict(),
            "target_network": self.target_network.state_dict(),
            "optimizer": opt,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Modules load in place (same tensors); the optimizer replaces its state tensors,
        # so a captured graph would point at stale memory: it is recaptured on next use.
        self.q_network.load_state_dict(state["q_network"])
        self.target_network.load_state_dict(state["target_network"])
        self._refresh_target_bf16()
        # The checkpoint gives the optimizer's state (moments, step counts); its settings stay this
        # learner's: lr and eps as built (a resume's --lr / --adam-eps), its kernels, an lr tensor.
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in self.optimizer.param_groups]
        impl = {key: settings[0].get(key) for key in ("capturable", "fused", "foreach")}
        self.optimizer.load_state_dict(state["optimizer"])
        for group, own in zip(self.optimizer.param_groups, settings):
            group.update(own)
            for p in group["params"]:
                st = self.optimizer.state.get(p, {})
                if "step" in st:
                    on_device = bool(impl["capturable"] or impl["fused"])
                    st["step"] = st["step"].to(device=p.device if on_device else "cpu",
                                               dtype=torch.float32)
        self.num_updates = int(state["num_updates"])
        self._num_updates_t.fill_(self.num_updates)
        self._graph = None
