"""bench/gpu_bundle.py: the envpool folder carried to a GPU machine without a network.

The real bundle is for the GPU image's Python (cp312) and is downloaded; these tests need no
network. They trim this venv's own envpool (a cp311 twin of the bundle) and import and step
Breakout and CartPole from it in a fresh interpreter where nothing but numpy and the bundle
can be found; and they run the wheel path (unpack, trim) on small wheels made here.
"""

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from bench import gpu_bundle

SITE = Path(sysconfig.get_paths()["platlib"])
HAS_ENVPOOL = (SITE / "envpool" / "atari").is_dir() and (SITE / "envpool_assets" / "atari").is_dir()

@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """This venv's envpool trimmed as the bundle trims the cp312 wheels."""
    if not HAS_ENVPOOL:
        pytest.skip("envpool (with envpool-assets) is not installed in this environment")
    out = tmp_path_factory.mktemp("bundle") / "gpu-bundle"
    return out, gpu_bundle.build(out, site=SITE)


def test_the_trimmed_envpool_imports_and_steps_breakout_with_nothing_else_on_the_path(twin):
    out, _ = twin
    proc = gpu_bundle.probe(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OK (2, 4, 84, 84) uint8")


def test_the_bundle_holds_atari_and_classic_control_only_within_20_mb(twin):
    out, manifest = twin
    assert manifest["problems"] == [] and gpu_bundle.check(out) == []
    assert manifest["total_mb"] <= gpu_bundle.MAX_MB
    assert json.loads((out / "BUNDLE.json").read_text()) == manifest
    assert sorted(p.name for p in (out / "envpool").iterdir()) == sorted(gpu_bundle.ENVPOOL_KEEP)
    assert "mujoco" not in (out / "envpool" / "entry.py").read_text()
    assert not list(out.rglob("__pycache__"))
    assert (out / "envpool-1.2.5.dist-info" / "METADATA").is_file()


def test_check_names_what_is_missing_and_what_should_have_been_left_out(tmp_path):
    (tmp_path / "envpool" / "mujoco").mkdir(parents=True)
    problems = gpu_bundle.check(tmp_path)
    assert "missing envpool_assets/atari/roms/breakout.bin" in problems
    assert "missing envpool/atari/atari_envpool*" in problems
    assert "should be left out: envpool/mujoco" in problems


def fake_wheel(folder: Path, name: str, files: dict) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


def test_wheels_are_unpacked_and_trimmed(tmp_path):
    """The download path without the download: wheels laid out like the real ones."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    so = "cpython-312-x86_64-linux-gnu.so"
    fake_wheel(wheels, "envpool-1.2.5-cp312-cp312-manylinux_2_28_x86_64.whl", {
        "envpool/__init__.py": "", "envpool/entry.py": "import envpool.mujoco.gym.registration\n",
        "envpool/registration.py": "", "envpool/py.typed": "", "envpool/python/protocol.py": "",
        "envpool/atari/atari_envpool.so": "x" * 1000, "envpool/atari/__pycache__/r.pyc": "",
        "envpool/classic_control/classic_control_envpool.so": "x",
        "envpool/mujoco/mujoco_gym_envpool.so": "x" * 10**6, "envpool/vizdoom/v.so": "x",
        "envpool.libs/libEGL.so": "x", "envpool-1.2.5.dist-info/METADATA": "Name: envpool\nVersion: 1.2.5\n",
        "envpool-1.2.5.dist-info/RECORD": ""})
    fake_wheel(wheels, "envpool_assets-0.3.0-py3-none-any.whl", {
        "envpool_assets/__init__.py": "", "envpool_assets/atari/roms/breakout.bin": "rom",
        "envpool_assets/mujoco/big.xml": "x" * 10**6})
    fake_wheel(wheels, "optree-0.20.0-cp312-cp312-manylinux_2_28_x86_64.whl",
               {"optree/__init__.py": "", f"optree/_C.{so}": "x"})
    fake_wheel(wheels, "gymnasium-1.4.0-py3-none-any.whl", {
        "gymnasium/__init__.py": "", "gymnasium/envs/registration.py": "", "gymnasium/envs/mujoco/ant.py": ""})
    fake_wheel(wheels, "small-py3-none-any.whl", {
        "dm_env/__init__.py": "", "farama_notifications/__init__.py": "", "typing_extensions.py": ""})
    out = tmp_path / "gpu-bundle"
    manifest = gpu_bundle.build(out, wheels=wheels)
    assert manifest["problems"] == [] and manifest["python"] == "3.12"
    assert set(manifest["sources"]) == {p.name for p in wheels.iterdir()}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "BUNDLE.json", "dm_env/__init__.py", "envpool-1.2.5.dist-info/METADATA", "envpool/__init__.py",
        "envpool/atari/atari_envpool.so", "envpool/classic_control/classic_control_envpool.so",
        "envpool/entry.py", "envpool/py.typed", "envpool/python/protocol.py", "envpool/registration.py",
        "envpool_assets/__init__.py", "envpool_assets/atari/roms/breakout.bin",
        "farama_notifications/__init__.py", "gymnasium/__init__.py", "gymnasium/envs/registration.py",
        f"optree/_C.{so}", "optree/__init__.py", "typing_extensions.py"]
    assert (out / "envpool" / "entry.py").read_text() == gpu_bundle.ENTRY


# fastdqn's own env layer with the bundle first on the path, as PYTHONPATH puts it on the GPU
# machine (there the venv's envpool is absent; here it is shadowed, and each module must come
# from the bundle).
FASTDQN_ENVS = """
import sys
bundle = sys.argv[1]
sys.path.insert(0, bundle)
import numpy as np
from fastdqn.envs import EnvConfig, VecEnv, make_env
for name in ("envpool", "envpool_assets", "dm_env", "gymnasium", "optree"):
    module = __import__(name)
    assert module.__file__.startswith(bundle), (name, module.__file__)
cfg = EnvConfig(env_id="Breakout-v5", num_envs=4, num_threads=1)
for env in (make_env(cfg), make_env(cfg, evaluation=True), VecEnv(cfg, render=True)):
    step = env.reset()
    for _ in range(30):
        step = env.step(np.random.default_rng(0).integers(0, env.num_actions, len(step.env_ids)))
print("OK", env.obs_shape, env.render(0).shape)
"""


def test_fastdqns_env_layer_runs_on_the_bundle(twin):
    out, _ = twin
    proc = subprocess.run([sys.executable, "-B", "-c", FASTDQN_ENVS, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK (4, 84, 84) (210, 160, 3)"
