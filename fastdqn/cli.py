"""The `fastdqn` command: train, eval, plot, bench."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdqn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train an agent")
    sub.add_parser("eval", help="evaluate a checkpoint")
    sub.add_parser("bench", help="benchmark")
    args = parser.parse_args(argv)
    print(f"{args.command}: not yet implemented", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
