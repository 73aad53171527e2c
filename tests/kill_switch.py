"""Run ``fastdqn train`` and SIGKILL it at a reproducible moment (for test_kill.py):

    python tests/kill_switch.py KIND N REPORT -- TRAIN_ARGS...

KIND is where the N-th event of this process kills it: ``steps`` (agent steps sent to the
envs), ``file_op`` (file operations of checkpoint writes: a crash in the middle of a save) or
``eval_game`` (evaluation games finished: a crash in the middle of an evaluation). Before dying it
writes {"steps_taken": agent steps this process took, "where": KIND} to REPORT. A real SIGKILL:
nothing is cleaned up.
"""

import json
import os
import signal
import sys

from fastdqn import checkpoint, cli
from fastdqn import train as train_mod

kind, n, report = sys.argv[1], int(sys.argv[2]), sys.argv[3]
assert sys.argv[4] == "--"
counts = {"steps": 0, "file_op": 0, "eval_game": 0}
taken = [0]


def event(what: str, amount: int = 1) -> None:
    counts[what] += amount
    if what == kind and counts[what] >= n:
        with open(report, "w") as f:
            json.dump({"steps_taken": taken[0], "where": what}, f)
        os.kill(os.getpid(), signal.SIGKILL)


class Env(train_mod.VecEnv):
    def send(self, actions):
        super().send(actions)
        taken[0] += len(actions)
        event("steps", len(actions))


class FileOps:
    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in ("fsync", "replace", "link", "unlink", "open", "close"):
            return real

        def op(*args, **kwargs):
            event("file_op")
            return real(*args, **kwargs)

        return op


real_evaluate = train_mod.evaluate


def evaluate(*args, on_game_end, **kwargs):
    def game_end(*a):
        event("eval_game")
        on_game_end(*a)

    return real_evaluate(*args, on_game_end=game_end, **kwargs)


train_mod.VecEnv = Env
train_mod.evaluate = evaluate
checkpoint.os = FileOps()
sys.exit(cli.main(sys.argv[5:]))
