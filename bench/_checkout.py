"""Lets `python bench/NAME.py` run from a bare checkout, without `pip install`.

Run as a file, a benchmark has bench/ (not the repository root) at the head of sys.path and
no package, so neither `fastdqn` nor the benchmarks' relative imports (`from .common import
...`) would resolve. Importing this module first puts the root in bench/'s place (so that
bench/env.py, bench/replay.py ... cannot shadow other modules) and makes the script a module
of the package `bench`. `python -m bench.NAME` (from the root) and `fastdqn bench NAME`
(installed: the package is `fastdqn.bench`) need none of this and never import it.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.modules["__main__"].__package__ = "bench"
