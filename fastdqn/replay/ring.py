"""The frame ring: Numba kernels that store single frames and rebuild transitions from them.

Storage (all arrays flat over N = num_envs * lane slots, env ``e`` owning the contiguous
lane of slots ``e * lane ... e * lane + lane - 1``; a lane is a ring):

    frames   (N, F)  obs dtype  the newest frame of the obs of each record, F = prod(frame shape)
    actions  (N,)    int32      the action that LED to this record (ignored on reset steps);
             (N, A)  float32    for continuous actions: the kernels copy a row where they copy an int
    rewards  (N,)    float32    the (clipped) reward of that transition
    flags    (N,)    uint8      TERMINATED | TRUNCATED | RESET_STEP | NEW_GAME | VALID bits
    back     (N,)    uint8      how many earlier frames of the same game the stack of this
                                record may use: 0 on a new game, then +1 per record, capped
                                at stack - 1. Frame j of the stack (0 = oldest) is the record
                                at offset -min(stack - 1 - j, back): older positions repeat
                                the first frame of the game, exactly as EnvPool pads them.
    written  (num_envs,) int64  records ever written per lane; record k sits in slot k % lane.

Records are counted per lane ("record k of env e"). The transition sampled at record k is
(stack at k, action at k+1, n-step return of rewards k+1..k+m, discount, stack at k+m), where
m is the first j <= n with record k+j terminated (discount 0) or truncated (discount gamma^j,
bootstrap from the last obs of the episode), else n (discount gamma^n). An episode that ends
without a flag (record k+j+1 is a reset step, e.g. an explicit reset) is cut like a truncation.

Validity (the VALID bit, mirrored by a non-zero priority in the sum tree):
  * record k becomes valid when record k+n is written, unless record k+1 is a reset step
    (then the action at k+1 was ignored by EnvPool and there is no transition out of k);
  * when record k+lane overwrites slot k % lane, record k dies, and so do the records
    k+d (1 <= d < stack) whose stack reaches back to k (back >= d);
  * with a sampling window of ``keep`` < lane records per lane, record k dies the same way
    when record k+keep is written (its frames stay in place, unsampled): the lane samples
    exactly like a lane of ``keep`` slots. When the window changes, ``apply_window`` sets
    every stored record's VALID bit to what that rule gives.
With lane >= stack + n + 1 every window of a valid record (stack behind it, n records
ahead) is stored, so nothing else can go stale.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

TERMINATED = 1
TRUNCATED = 2
RESET_STEP = 4
NEW_GAME = 8
VALID = 16

# add_records error codes (negative return values)
ERR_ENV_RANGE = -1
ERR_ENV_DUPLICATE = -2
ERR_FIRST_NOT_NEW_GAME = -3
ERR_NEW_GAME_NOT_RESET = -4


@numba.njit(cache=True, nogil=True, inline="always")
def _starts_a_transition(flags, base, lane, k):
    """Record k of the lane at ``base`` is followed by a step of the same episode (record
    k + 1 is not a reset step), so (k, k + 1, ...) is a transition that can be sampled."""
    return not (flags[base + (k + 1) % lane] & RESET_STEP)


@numba.njit(cache=True, nogil=True)
def add_records(
    obs, env_ids, actions, rewards, terminated, truncated, reset_step, new_game,
    frames, act_store, rew_store, flags, back, written,
    stack, n_step, max_priority, keep, change_idx, change_val,
):
    """Append one record per env; emit the (slot, priority) changes for the trees.

    obs is (B, S, F): its last frame obs[:, S-1] is stored. ``keep`` is the sampling window
    in records per lane (``lane`` for all of it). Returns the number of changes written to
    change_idx / change_val (at most stack + 1 per env), or a negative error code before
    touching anything.
    """
    batch = env_ids.shape[0]
    num_envs = written.shape[0]
    lane = frames.shape[0] // num_envs
    seen = np.zeros(num_envs, np.bool_)
    for i in range(batch):
        e = env_ids[i]
        if e < 0 or e >= num_envs:
            return ERR_ENV_RANGE
        if seen[e]:
            return ERR_ENV_DUPLICATE
        seen[e] = True
        if new_game[i] and not reset_step[i]:
            return ERR_NEW_GAME_NOT_RESET
        if written[e] == 0 and not new_game[i]:
            return ERR_FIRST_NOT_NEW_GAME

    last = obs.shape[1] - 1
    count = 0
    for i in range(batch):
        e = env_ids[i]
        w = written[e]
        base = e * lane
        slot = w % lane
        if w >= keep:
            # Record w - keep dies (keep == lane: slot `slot` holds it and is about to be
            # overwritten; keep < lane: it leaves the window).
            count = _kill(flags, back, base, lane, stack, w - keep, change_idx, change_val, count)
        row = base + slot
        for j in range(frames.shape[1]):
            frames[row, j] = obs[i, last, j]
        act_store[row] = actions[i]
        rew_store[row] = rewards[i]
        f = 0
        if terminated[i]:
            f |= TERMINATED
        if truncated[i]:
            f |= TRUNCATED
        if reset_step[i]:
            f |= RESET_STEP
        if new_game[i]:
            f |= NEW_GAME
        flags[row] = f
        if new_game[i]:
            back[row] = 0
        else:
            prev = back[base + (slot + lane - 1) % lane] + 1
            back[row] = prev if prev < stack else stack - 1
        written[e] = w + 1
        # Record k = w - n now has its whole n-step window stored.
        k = w - n_step
        if k >= 0 and _starts_a_transition(flags, base, lane, k):
            t = base + k % lane
            flags[t] |= VALID
            change_idx[count] = t
            change_val[count] = max_priority
            count += 1
    return count


@numba.njit(cache=True, nogil=True)
def _kill(flags, back, base, lane, stack, k, change_idx, change_val, count):
    """Record k of the lane at ``base`` dies, and so does every later record k + d whose
    stack reaches back d frames into it; each death is emitted as a (slot, 0) change.
    Returns the new change count."""
    for d in range(stack):
        t = base + (k + d) % lane
        if (flags[t] & VALID) and (d == 0 or back[t] >= d):
            flags[t] &= ~np.uint8(VALID)
            change_idx[count] = t
            change_val[count] = 0.0
            count += 1
    return count


@numba.njit(cache=True, nogil=True)
def apply_window(flags, back, written, stack, n_step, keep):
    """Set the VALID bit of every stored record to what add_records would have left with a
    window of ``keep`` records per lane from the start (``lane``: no window): record k is
    valid when record k + n is written, record k + 1 is not a reset step, and its whole stack
    (records k - back[k] ... k) lies in the newest ``keep`` records of the lane. Only flags
    change; the caller sets the priorities."""
    num_envs = written.shape[0]
    lane = flags.shape[0] // num_envs
    for e in range(num_envs):
        w = written[e]
        base = e * lane
        oldest = w - keep  # the oldest record in the window (negative until the lane holds keep)
        for k in range(max(0, w - lane), w):
            t = base + k % lane
            if k + n_step < w and _starts_a_transition(flags, base, lane, k) and k - back[t] >= oldest:
                flags[t] |= VALID
            else:
                flags[t] &= ~np.uint8(VALID)


@intrinsic
def _memcpy_rows(typingctx, dst, dst_row, src, src_row, nrows):
    """dst[dst_row : dst_row + nrows] = src[src_row : src_row + nrows] as ONE memcpy, for 2-D
    C-contiguous arrays with equal rows. Numba compiles a slice assignment to a generic
    element loop (~5x slower than memcpy here); an explicit byte loop is vectorized but still
    5-8 % slower than libc's memcpy over a multi-frame run."""
    ok = (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == src.ndim == 2
          and dst.layout == src.layout == "C" and dst.dtype == src.dtype)
    if not ok:
        return None
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        dst_array = context.make_array(signature.args[0])(context, builder, args[0])
        src_array = context.make_array(signature.args[2])(context, builder, args[2])
        row_bytes = builder.extract_value(src_array.strides, 0)
        byte_ptr = ir.IntType(8).as_pointer()
        to = builder.gep(builder.bitcast(dst_array.data, byte_ptr), [builder.mul(args[1], row_bytes)])
        frm = builder.gep(builder.bitcast(src_array.data, byte_ptr), [builder.mul(args[3], row_bytes)])
        memcpy = builder.module.declare_intrinsic("llvm.memcpy", [byte_ptr, byte_ptr, row_bytes.type])
        builder.call(memcpy, [to, frm, builder.mul(args[4], row_bytes), ir.Constant(ir.IntType(1), 0)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _copy_frames(frames, back, base, slot, lane, stack, dst):
    # dst[p] = frame at offset p - (stack - 1) from the record in `slot`, for p < len(dst).
    # Offsets before the start of the game (further back than `back`) repeat its first
    # frame; the rest are consecutive records, copied as one run (two if the lane wraps).
    width = dst.shape[0]
    b = np.int64(back[base + slot])
    pad = stack - 1 - b
    first = base + (slot - b + lane) % lane
    for p in range(pad):
        _memcpy_rows(dst, p, frames, first, 1)
    p = pad
    while p < width:
        src = (slot + p - (stack - 1) + lane) % lane
        run = min(width - p, lane - src)
        _memcpy_rows(dst, p, frames, base + src, run)
        p += run


@numba.njit(cache=True, nogil=True, inline="always")
def _targets(i, idx, base, slot, leaves, min_priority, beta, act_store, rew_store, flags,
             lane, n_step, gamma, weights, actions, returns, discounts, horizon):
    # Importance weight, action, n-step return, discount and horizon m of sample i; returns
    # True when the n-step window was cut early (m < n) by a truncation, i.e. the next stack
    # does not sit n records ahead.
    # (N P(i))^-beta / max_j (N P(j))^-beta = (p_i / p_min)^-beta
    weights[i] = (leaves[idx] / min_priority) ** (-beta)
    actions[i] = act_store[base + (slot + 1) % lane]
    ret = 0.0
    g = 1.0
    for j in range(1, n_step + 1):
        t = base + (slot + j) % lane
        ret += g * rew_store[t]
        g *= gamma
        f = flags[t]
        if f & TERMINATED:
            returns[i] = ret
            discounts[i] = 0.0
            horizon[i] = j
            return False
        if (f & TRUNCATED) or (j < n_step and flags[base + (slot + j + 1) % lane] & RESET_STEP):
            returns[i] = ret
            discounts[i] = g
            horizon[i] = j
            return j < n_step
    returns[i] = ret
    discounts[i] = g
    horizon[i] = n_step
    return False


@numba.njit(cache=True, nogil=True)
def nstep_targets(indices, leaves, min_priority, beta, act_store, rew_store, flags,
                  lane, n_step, gamma, weights, actions, returns, discounts, horizon):
    """Importance weights, actions, n-step returns, discounts and horizons m of a batch.

    Returns True when some sample was cut early (m < n) by a truncation.
    """
    early = False
    for i in range(indices.shape[0]):
        idx = indices[i]
        base = (idx // lane) * lane
        early |= _targets(i, idx, base, idx - base, leaves, min_priority, beta, act_store, rew_store,
                          flags, lane, n_step, gamma, weights, actions, returns, discounts, horizon)
    return early


@numba.njit(cache=True, nogil=True)
def targets_and_window(indices, leaves, min_priority, beta, frames, back, act_store, rew_store, flags,
                       lane, stack, n_step, gamma, weights, actions, returns, discounts, horizon, window):
    """nstep_targets and gather_window in one pass (the scattered loads of the targets
    overlap with the frame copies: a few % faster than two passes).

    With window.shape[1] = stack + n: obs = window[:, :stack] and, for every sample not cut
    early, its next stack = window[:, n:]. A new game never starts inside an n-step window
    that is not cut (a new game is a reset step, which cuts the window before it), so the
    padding of the record's own stack holds for both. Returns True when some sample was cut
    early by a truncation: its next stack must then come from gather_next.
    """
    early = False
    for i in range(indices.shape[0]):
        idx = indices[i]
        base = (idx // lane) * lane
        slot = idx - base
        early |= _targets(i, idx, base, slot, leaves, min_priority, beta, act_store, rew_store,
                          flags, lane, n_step, gamma, weights, actions, returns, discounts, horizon)
        _copy_frames(frames, back, base, slot, lane, stack, window[i])
    return early


@numba.njit(cache=True, nogil=True)
def gather_window(indices, frames, back, lane, stack, window):
    """window[i, p] = frame at offset p - (stack-1) from record indices[i], padded at game
    starts; with window.shape[1] == stack that is the stacked obs."""
    for i in range(indices.shape[0]):
        idx = indices[i]
        base = (idx // lane) * lane
        _copy_frames(frames, back, base, idx - base, lane, stack, window[i])


@numba.njit(cache=True, nogil=True)
def gather_next(indices, horizon, frames, back, lane, stack, next_obs):
    """next_obs[i] = stack at record indices[i] + horizon[i]."""
    for i in range(indices.shape[0]):
        idx = indices[i]
        base = (idx // lane) * lane
        _copy_frames(frames, back, base, (idx - base + horizon[i]) % lane, lane, stack, next_obs[i])


@numba.njit(cache=True, nogil=True)
def gather_stacks(indices, frames, back, written, stack, out):
    """out[i] = stack at stored record indices[i]; returns the first bad i, or -1.

    A record is bad when its slot was never written or its stack reaches overwritten slots.
    """
    num_envs = written.shape[0]
    lane = frames.shape[0] // num_envs
    for i in range(indices.shape[0]):
        idx = indices[i]
        if idx < 0 or idx >= frames.shape[0]:
            return i
        e = idx // lane
        base = e * lane
        slot = idx - base
        w = written[e]
        if slot >= w:
            return i
        k = w - 1 - (w - 1 - slot) % lane  # the record held by this slot
        if k - back[idx] < w - lane:
            return i
        _copy_frames(frames, back, base, slot, lane, stack, out[i])
    return -1
