"""The device side never imports torch, onnx or the host-only packages."""

import subprocess
import sys

from conftest import VAL_IMAGES

BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {'torch', 'onnx', 'yaml', 'ultralytics', 'tensorflow'}:
            raise ImportError(f'blocked on a device: {name}', name=name)
sys.meta_path.insert(0, Block())
sys.argv = ['edgeseg'] + sys.argv[1:]
from edgeseg.cli import main
main()
"""


def _device_cli(*args):
    return subprocess.run([sys.executable, "-c", BLOCK, *args], capture_output=True, text=True, timeout=300)


def test_run_bench_and_api_without_host_packages(int8_bundle, tmp_path):
    r = _device_cli("run", str(int8_bundle.path), "--source", str(VAL_IMAGES), "--max-frames", "5",
                    "--json", str(tmp_path / "r.jsonl"), "--save", str(tmp_path / "v.mp4"))
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5
    r = _device_cli("bench", str(int8_bundle.path), "--frames", "5")
    assert r.returncode == 0, r.stderr
    r = _device_cli("doctor")
    assert r.returncode == 0, r.stderr


def test_convert_on_a_device_says_what_to_install():
    from edgeseg.install import pip_extra

    r = _device_cli("convert")
    assert r.returncode == 2 and pip_extra("host") in r.stderr and "Traceback" not in r.stderr
