"""EnvPool for a GPU machine without a network: one folder of Atari and classic control only.

The GPU image (Python 3.12, torch and numpy installed) has no envpool, and the full wheels do
not travel: envpool 1.2.5's cp312 wheel is 52.8 MB and its ROMs come in envpool-assets (62.4 MB,
mostly MuJoCo, VizDoom and gfootball data). This downloads the wheels on a machine with one
(``pip download``), unpacks them and keeps only what ``import envpool`` and the Atari and
classic-control tasks use: envpool's Python layer and its two native modules, the Atari ROMs,
and envpool's small pure dependencies. The result is one folder to put on ``sys.path``
(``bench/gpu_check.py`` does that with ``--bundle``, by default ``<repo>/gpu-bundle``):

    python -m bench.gpu_bundle --out gpu-bundle                 # cp312 manylinux x86_64
    python -m bench.gpu_bundle --out DIR --python-version 3.11  # a twin for this machine
    python -m bench.gpu_bundle --out DIR --wheels DIR           # from wheels already downloaded
    python -m bench.gpu_bundle --out gpu-bundle --check-with python3.12   # and import it there

``envpool/entry.py`` is rewritten to register the two kept families only; everything else of
envpool (MuJoCo, VizDoom, procgen, box2d, gfootball, ...) is left out, and with it envpool's
GL libraries. numpy is not bundled (the GPU image has it, and a wheel built for another numpy
would not load). ``BUNDLE.json`` in the folder lists the wheels, their sha256 and the size.
"""

from __future__ import annotations

if not __package__:  # run as a file (python bench/NAME.py): see bench/_checkout.py
    import _checkout  # noqa: F401

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# What `import envpool` and envpool.make("Breakout-v5" / "CartPole-v1") need besides numpy,
# found by importing the trimmed folder with nothing else on sys.path (tests/test_gpu_bundle.py
# does that). dm-env's absl-py / dm-tree, gymnasium's cloudpickle and envpool's matplotlib,
# pillow, glfw and packaging are not imported on that path.
WHEELS = ("envpool==1.2.5", "envpool-assets==0.3.0", "dm-env==1.6", "gymnasium==1.4.0",
          "farama-notifications==0.0.6", "optree==0.20.0", "typing-extensions==4.16.0")
PACKAGES = ("envpool", "envpool_assets", "dm_env", "gymnasium", "farama_notifications", "optree",
            "typing_extensions")
# Parts of the kept packages that nothing on the Atari / classic-control path loads.
ENVPOOL_KEEP = ("__init__.py", "entry.py", "registration.py", "py.typed", "python", "atari", "classic_control")
ASSETS_KEEP = ("__init__.py", "atari")
GYMNASIUM_DROP = ("envs/mujoco", "envs/box2d", "envs/toy_text", "envs/phys2d", "envs/tabular")
ENTRY = ('"""Entry point of the envs this bundle keeps (bench/gpu_bundle.py): Atari and classic control."""\n\n'
         "import envpool.atari.registration  # noqa: F401\n"
         "import envpool.classic_control.registration  # noqa: F401\n")
# What a bundle must hold (paths relative to it; a trailing * matches any file name start).
MUST_CONTAIN = ("envpool/__init__.py", "envpool/entry.py", "envpool/python/protocol.py",
                "envpool/atari/atari_envpool*", "envpool/classic_control/classic_control_envpool*",
                "envpool_assets/__init__.py", "envpool_assets/atari/roms/breakout.bin", "dm_env/__init__.py",
                "gymnasium/__init__.py", "farama_notifications/__init__.py", "optree/__init__.py", "optree/_C*",
                "typing_extensions.py")
MUST_NOT_CONTAIN = ("envpool/mujoco", "envpool/vizdoom", "envpool/procgen", "envpool/box2d", "envpool/gfootball",
                    "envpool.libs", "envpool_assets/mujoco", "envpool_assets/vizdoom", "numpy")
MAX_MB = 20.0


def download(dest: Path, python_version: str = "3.12", platform: str = "manylinux_2_28_x86_64") -> list[Path]:
    """The wheels of WHEELS for that Python and platform, without their dependencies.

    manylinux_2_28 (not manylinux2014): envpool 1.2.5 is built for glibc 2.27/2.28, and pip
    accepts older tags under a newer one but not the reverse."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                    "--python-version", python_version, "--platform", platform, "--dest", str(dest), *WHEELS],
                   check=True)
    return sorted(dest.glob("*.whl"))


def unpack(wheels: list[Path], dest: Path) -> Path:
    """The wheels unpacked into one site-packages-like folder."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(dest)
    return dest


def trim(site: Path, out: Path) -> dict:
    """Copy what the bundle keeps from ``site`` (unpacked wheels or an installed site-packages)
    into ``out``; returns {package: bytes kept}."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    kept = {}
    for package in PACKAGES:
        source = site / package
        if package == "typing_extensions":  # a single module
            shutil.copy2(site / "typing_extensions.py", out / "typing_extensions.py")
        elif package in ("envpool", "envpool_assets"):
            for part in ENVPOOL_KEEP if package == "envpool" else ASSETS_KEEP:
                if (source / part).is_dir():
                    shutil.copytree(source / part, out / package / part, ignore=ignore)
                elif (source / part).is_file():
                    (out / package).mkdir(exist_ok=True)
                    shutil.copy2(source / part, out / package / part)
        else:
            shutil.copytree(source, out / package, ignore=ignore)
        if package == "envpool":
            (out / "envpool" / "entry.py").write_text(ENTRY)
        if package == "gymnasium":
            for part in GYMNASIUM_DROP:
                shutil.rmtree(out / package / part, ignore_errors=True)
        # The version record, for importlib.metadata; RECORD would list the files left out.
        for info in site.glob(f"{package}-*.dist-info"):
            (out / info.name).mkdir()
            shutil.copy2(info / "METADATA", out / info.name / "METADATA")
        kept[package] = size_bytes(out / package) if (out / package).exists() else size_bytes(out / f"{package}.py")
    return kept


def size_bytes(path: Path) -> int:
    """Bytes of a file or a folder's files, bytecode caches left out (Python writes them where
    the bundle is used; they do not travel)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def check(bundle: Path) -> list[str]:
    """What is wrong with a bundle folder: each missing part and each part that should have
    been left out; [] when it is complete and within MAX_MB."""
    problems = []
    for pattern in MUST_CONTAIN:
        parent, name = (bundle / pattern).parent, Path(pattern).name
        found = any(parent.glob(name)) if name.endswith("*") else (bundle / pattern).exists()
        if not found:
            problems.append(f"missing {pattern}")
    problems += [f"should be left out: {p}" for p in MUST_NOT_CONTAIN if (bundle / p).exists()]
    mb = size_bytes(bundle) / 1e6
    if mb > MAX_MB:
        problems.append(f"{mb:.1f} MB, over {MAX_MB:g} MB")
    return problems


# Run by `python -I -B -c PROBE BUNDLE`: numpy from that Python's site-packages, then
# site-packages leaves sys.path, so every other module must come from the bundle.
PROBE = """
import sys, numpy
bundle = sys.argv[1]
sys.path[:] = [bundle] + [p for p in sys.path if "site-packages" not in p]
import envpool
names = ("envpool", "envpool_assets", "dm_env", "gymnasium", "farama_notifications", "optree", "typing_extensions")
outside = {n: sys.modules[n].__file__ for n in names if n in sys.modules
           and not sys.modules[n].__file__.startswith(bundle)}
assert not outside, outside
env = envpool.make("Breakout-v5", env_type="gymnasium", num_envs=2, seed=0)
obs, info = env.reset()
for _ in range(20):
    obs, reward, terminated, truncated, info = env.step(numpy.ones(2, dtype=numpy.int32))
cartpole = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=2)
cartpole.reset()
cartpole.step(numpy.zeros(2, dtype=numpy.int32))
print("OK", obs.shape, obs.dtype, len(envpool.list_all_envs()))
"""


def probe(bundle: Path, python: str = sys.executable) -> subprocess.CompletedProcess:
    """Import the bundle with ``python`` (of the bundle's version, with numpy) and nothing
    else, and step Breakout and CartPole from it; stdout starts with "OK" when it works."""
    return subprocess.run([python, "-I", "-B", "-c", PROBE, str(bundle.resolve())], capture_output=True, text=True,
                          timeout=300)


def build(out: Path, python_version: str | None = None, wheels: Path | None = None,
          site: Path | None = None) -> dict:
    """The bundle in ``out``, from downloaded wheels (the default), wheels in a folder, or an
    installed site-packages (this Python's, by default); returns its manifest (also written
    to out/BUNDLE.json)."""
    if python_version is None:
        python_version = f"{sys.version_info[0]}.{sys.version_info[1]}" if site else "3.12"
    with tempfile.TemporaryDirectory() as tmp:
        if site is None:
            files = sorted(wheels.glob("*.whl")) if wheels else download(Path(tmp, "wheels"), python_version)
            site = unpack(files, Path(tmp, "site"))
            sources = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
        else:
            sources = {"site-packages": str(site)}
        kept = trim(site, out)
    manifest = {"python": python_version, "sources": sources, "kept_bytes": kept,
                "total_mb": round(size_bytes(out) / 1e6, 2), "problems": check(out)}
    (out / "BUNDLE.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-bundle"), help="the folder to write (replaced)")
    parser.add_argument("--python-version", help="of the GPU machine (default 3.12; with --site-packages, this one's)")
    parser.add_argument("--wheels", type=Path, help="use the wheels in this folder instead of downloading")
    parser.add_argument("--site-packages", type=Path, help="trim an installed site-packages instead")
    parser.add_argument("--check-with", metavar="PYTHON",
                        help="then import it and step Breakout with this interpreter (the bundle's Python "
                             "version, numpy installed) and nothing else on the path")
    args = parser.parse_args(argv)
    manifest = build(args.out, args.python_version, args.wheels, args.site_packages)
    for package, n in manifest["kept_bytes"].items():
        print(f"{package:22s} {n / 1e6:6.2f} MB")
    print(f"{args.out}: {manifest['total_mb']:.2f} MB for Python {manifest['python']}")
    for problem in manifest["problems"]:
        print(f"PROBLEM: {problem}")
    if args.check_with:
        proc = probe(args.out, args.check_with)
        ok = proc.returncode == 0 and proc.stdout.startswith("OK")
        print(f"{args.check_with}: " + (proc.stdout.strip() if ok else f"FAILED: {proc.stderr.strip()[-2000:]}"))
        if not ok:
            return 1
    return 1 if manifest["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
