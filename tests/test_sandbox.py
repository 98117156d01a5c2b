"""The code sandbox: programs run, fail and time out as they should, and every escape attempt is blocked
while the caller goes on."""

from __future__ import annotations

import os
import time

import pytest

from conftest import REPO
from rapid_cli.config import RapidError
from rapid_cli.sandbox import Limits, Sandbox, seccomp_filter


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox("bwrap", Limits(timeout_s=2.0, memory_mb=512))


def test_programs_pass_fail_and_import_numpy(sandbox):
    assert sandbox.run("assert sum(range(4)) == 6").passed
    out = sandbox.run("import numpy as np\nprint(int(np.arange(4).sum()))")
    assert out.passed and out.stdout.strip() == "6"
    bad = sandbox.run("def f(x):\n    return x\nassert f(1) == 2")
    assert bad.status == "failed" and "AssertionError" in bad.stderr
    assert sandbox.run("this is not python").status == "failed"


def test_threads_are_allowed(sandbox):
    out = sandbox.run("import threading\nt = threading.Thread(target=print, args=('hi',))\nt.start(); t.join()")
    assert out.passed and out.stdout.strip() == "hi"


# Each escape attempt, and how we know it was blocked. The program prints ESCAPED only if it got through.
ESCAPES = {
    "write outside tmp": "open('/usr/escaped', 'w').write('x')\nprint('ESCAPED')",
    "write to the project": f"open({str(REPO / 'ESCAPED')!r}, 'w').write('x')\nprint('ESCAPED')",
    "read the project": f"print(open({str(REPO / 'pyproject.toml')!r}).read()[:10], 'ESCAPED')",
    "list the project": f"import os\nprint(os.listdir({str(REPO)!r}), 'ESCAPED')",
    "read host secrets": "print(open('/etc/shadow').read()[:10], 'ESCAPED')",
    "network": "import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=1)\nprint('ESCAPED')",
    "network by name": "import urllib.request\nurllib.request.urlopen('https://pypi.org', timeout=1)\nprint('ESCAPED')",
    "fork bomb": "import os\nwhile True:\n    os.fork()\n    print('ESCAPED')",
    "subprocess": "import subprocess\nsubprocess.run(['true'])\nprint('ESCAPED')",
    "memory bomb": "x = bytearray(4 * 1024**3)\nprint('ESCAPED')",
    "memory creep": "xs = []\nwhile True:\n    xs.append(bytearray(50 * 1024**2))",
    "infinite loop": "while True:\n    pass",
    "sleep forever": "import time\ntime.sleep(1000)\nprint('ESCAPED')",
    "huge output": "while True:\n    print('x' * 100000)",
    "fill tmp": "f = open('/tmp/big', 'wb')\nwhile True:\n    f.write(b'x' * 1024**2)",
    "kill every process": "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('ESCAPED')",
    "ptrace": "import ctypes\nassert ctypes.CDLL(None).ptrace(16, 1, 0, 0) == 0\nprint('ESCAPED')",
    "new user namespace": "import ctypes\nassert ctypes.CDLL(None).unshare(0x10000000) == 0\nprint('ESCAPED')",
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_attempt_is_blocked(sandbox, name):
    start = time.perf_counter()
    out = sandbox.run(ESCAPES[name])
    assert not out.passed, (name, out)
    assert "ESCAPED" not in out.stdout
    assert time.perf_counter() - start < 10  # killed at its limits, not left running
    assert not (REPO / "ESCAPED").exists()
    assert len(out.stdout) <= sandbox.limits.output_chars


def test_killing_its_parent_does_not_reach_us(sandbox):
    me = os.getpid()
    out = sandbox.run(f"import os, signal\nfor pid in (os.getppid(), {me}, 1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                      "    except OSError as e:\n        print(pid, e)\nprint('done')")
    assert "done" in out.stdout  # its own PID namespace: our pid does not exist there, its parent ignores it
    assert os.getpid() == me


def test_timeout_kills_the_whole_program_and_the_run_goes_on(sandbox):
    before = len(os.listdir("/proc"))
    outs = sandbox.run_many(["import threading, time\nfor _ in range(4):\n    threading.Thread(target=time.sleep, args=(60,)).start()\n"
                             "time.sleep(60)"] * 2 + ["print('fine')"])
    assert [o.status for o in outs] == ["timeout", "timeout", "passed"]
    time.sleep(0.2)
    assert len(os.listdir("/proc")) <= before + 2  # nothing left behind


def test_many_programs_run_in_parallel(sandbox):
    start = time.perf_counter()
    outs = sandbox.run_many(["import time\ntime.sleep(0.5)"] * 8)
    assert all(o.passed for o in outs)
    if (os.cpu_count() or 1) >= 2:
        assert time.perf_counter() - start < 8 * 0.5  # overlapped, not one after another


def test_unknown_sandbox_kind_is_refused():
    with pytest.raises(RapidError, match="bwrap, none"):
        Sandbox("docker")


def test_seccomp_filter_is_well_formed():
    prog = seccomp_filter("x86_64")
    assert prog is not None and len(prog) % 8 == 0 and len(prog) // 8 < 4096
    assert seccomp_filter("sparc") is None


def test_opt_out_runs_without_isolation_but_with_limits():
    plain = Sandbox("none", Limits(timeout_s=1.0, memory_mb=512))
    assert plain.run("print(1 + 1)").stdout.strip() == "2"
    assert plain.run("while True: pass").status == "timeout"
    assert not plain.run("x = bytearray(2 * 1024**3)").passed


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit", "exit()"])
def test_exiting_early_with_status_zero_does_not_pass(sandbox, exit_call):
    out = sandbox.run(f"{exit_call}\nassert False, 'the tests would fail'")
    assert not out.passed, out
