"""The code sandbox: programs run, fail and time out as they should, and every escape attempt is blocked
while the caller goes on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from rapid_cli.errors import RapidError
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
    out = sandbox.run(f"import os, signal\nfor pid in (os.getppid(), {me}, 1):\n"
                      "    try:\n        os.kill(pid, signal.SIGKILL)\n"
                      "    except OSError as e:\n        print(pid, e)\nprint('done')")
    assert "done" in out.stdout  # its own PID namespace: our pid does not exist there, its parent ignores it
    assert os.getpid() == me


def test_timeout_kills_the_whole_program_and_the_run_goes_on(sandbox):
    outs = sandbox.run_many([_NS + "import threading, time\n"
                             "for _ in range(4):\n    threading.Thread(target=time.sleep, args=(60,)).start()\n"
                             "time.sleep(60)"] * 2 + [_NS + "print('fine')"])
    assert [o.status for o in outs] == ["timeout", "timeout", "passed"]
    for out in outs:  # nothing left behind (counted by PID namespace: other processes on the host come and go)
        assert _processes_in(_pidns(out)) == []


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


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "raise SystemExit",
                                       "exit()"])
def test_exiting_early_with_status_zero_does_not_pass(sandbox, exit_call):
    out = sandbox.run(f"{exit_call}\nassert False, 'the tests would fail'")
    assert not out.passed, out


# -- the attack suite of issue 13: the jail is not host root, cannot outlive its run, cannot take the
# machine's memory or task table. Each program prints ESCAPED when it got through; every program also
# prints its PID namespace first, so the test can look for leftovers of it on the host afterwards.
_NS = "import os\nprint('pidns', os.readlink('/proc/self/ns/pid'), flush=True)\n"
_CAP_MB = 300  # every memory attack stops at this much: far above the caps, far below the machine
_FILL = f"""import os
def fill(where, chunk=1 << 20, per_file=4 << 20):
    got, n = 0, 0
    while got < {_CAP_MB} << 20:
        try:
            with open(os.path.join(where, f'fill{{n}}'), 'wb') as f:
                for _ in range(per_file // chunk):
                    f.write(b'x' * chunk); f.flush(); got += chunk
        except OSError as e:
            print(where, got >> 20, 'MiB', e)
            return got
        n += 1
    print('ESCAPED', where, got >> 20, 'MiB')
    return got
"""
ATTACKS = {
    # Host root: a global sysctl written back with its own value (harmless if it gets through), a host
    # device node chmod-ed to its own mode, the uid the jail's user has on the host.
    "host sysctl write": textwrap.dedent("""\
        for p in ('/proc/sys/kernel/printk_ratelimit', '/proc/sys/vm/overcommit_ratio'):
            try:
                v = open(p).read()
                open(p, 'w').write(v)
                print('ESCAPED', p)
            except OSError as e:
                print(p, e)
        if not os.statvfs('/proc/sys/kernel').f_flag & os.ST_RDONLY:
            print('ESCAPED /proc/sys is mounted rw')"""),
    "host device chmod": "import stat\nm = stat.S_IMODE(os.stat('/dev/null').st_mode)\n"
                         "try:\n    os.chmod('/dev/null', m)\n    print('ESCAPED chmod /dev/null')\n"
                         "except OSError as e:\n    print(e)",
    # uid 0 in the host's user namespace (inode 0xEFFFFFFD). In a user namespace of its own, the map seen
    # from inside is relative to bwrap's namespace: test_the_program_is_not_host_root reads it from the host.
    "host uid is root": "ids = [int(x) for x in open('/proc/self/status').read().split('Uid:')[1].split()[:4]]\n"
                        "host_ns = os.readlink('/proc/self/ns/user') == f'user:[{0xEFFFFFFD}]'\n"
                        "if host_ns and 0 in ids:\n    print('ESCAPED host uid 0')\n"
                        "caps = [l for l in open('/proc/self/status') if l[:6] in ('CapPrm', 'CapEff', 'CapAmb')]\n"
                        "if any(int(l.split()[1], 16) for l in caps):\n    print('ESCAPED capabilities', caps)\n"
                        "print('uids', ids, 'host namespace' if host_ns else 'own namespace')",
    "root-only kernel files": textwrap.dedent("""\
        for p in ('/proc/kpageflags', '/proc/slabinfo', '/proc/kcore'):
            try:
                open(p, 'rb').read(64)
                print('ESCAPED read', p)
            except OSError as e:
                print(p, e)
        for line in open('/proc/keys'):
            if line.split()[5] == '0':
                print('ESCAPED root key', line)"""),
    # Memory outside RLIMIT_AS: the jail's root and /dev tmpfs, /dev/shm, /tmp past its size, memfds,
    # SysV shared memory, socket buffers.
    "fill the root": _FILL + "for d in ('/', '/dev', '/opt', '/usr', '/proc'):\n    fill(d)",
    "fill /dev/shm": _FILL + "fill('/dev/shm')",
    "fill /tmp past its size": _FILL + "fill('/tmp')",
    "memfd flood": textwrap.dedent(f"""\
        got = 0
        try:
            while got < {_CAP_MB} << 20:
                fd = os.memfd_create('x')
                for _ in range(4):
                    os.write(fd, b'x' * (1 << 20)); got += 1 << 20
            print('ESCAPED memfd', got >> 20, 'MiB')
        except OSError as e:
            print('memfd', got >> 20, 'MiB', e)"""),
    "SysV shm flood": textwrap.dedent(f"""\
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        got = 0
        while got < {_CAP_MB} << 20:
            i = libc.shmget(0, 32 << 20, 0o1600)
            if i < 0:
                print('shmget', got >> 20, 'MiB', ctypes.get_errno()); break
            p = libc.shmat(i, None, 0)
            ctypes.memset(p, 1, 32 << 20); libc.shmdt(ctypes.c_void_p(p)); got += 32 << 20
        else:
            print('ESCAPED SysV shm', got >> 20, 'MiB')"""),
    "socket buffer flood": textwrap.dedent(f"""\
        import socket
        keep, got = [], 0
        try:
            while got < {_CAP_MB} << 20:
                a, b = socket.socketpair()
                keep += [a, b]
                for s in (a, b):
                    try:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 20)
                    except OSError:
                        pass
                    s.setblocking(False)
                    try:
                        while True:
                            got += s.send(b'x' * 65536)
                    except BlockingIOError:
                        pass
            print('ESCAPED socket buffers', got >> 20, 'MiB')
        except OSError as e:
            print('sockets', got >> 20, 'MiB', e)"""),
    # Tasks: threads with small stacks get past RLIMIT_AS; they must hit the task cap (64) well before 200.
    "thread flood": "import threading, time\nthreading.stack_size(1 << 16)\nn = 0\ntry:\n    while n < 200:\n"
                    "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n += 1\n"
                    "    print('ESCAPED threads', n)\nexcept RuntimeError as e:\n    print('threads', n, e)",
    # The reaper: detach from the parent, ignore signals, keep threads alive, and where pid 1's memory is
    # writable (bwrap's own reaper before issue 13; now the program is pid 1 itself), overwrite its code
    # with a nop sled into prctl(PR_SET_PDEATHSIG, 0) and a spin (x86-64).
    "outlive the run": textwrap.dedent("""\
        import ctypes, platform, signal, threading, time
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 0, 0, 0, 0)
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)
        try:
            os.setsid()
        except OSError:
            pass
        code = bytes.fromhex('bf01000000' '31f6' 'b89d000000' '0f05' 'ebfe')
        try:
            assert platform.machine() == 'x86_64', 'no shellcode for this machine'
            with open('/proc/1/mem', 'r+b', buffering=0) as mem:
                for line in open('/proc/1/maps'):
                    addr, perms = line.split()[:2]
                    if 'x' in perms and '[v' not in line:
                        lo, hi = (int(a, 16) for a in addr.split('-'))
                        mem.seek(lo)
                        mem.write(b'\\x90' * (hi - lo - len(code)) + code)
            print('pid 1 hijacked', flush=True)
        except (OSError, AssertionError) as e:
            print('pid 1 memory:', e, flush=True)
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        time.sleep(3600)"""),
}


def _processes_in(pidns: str) -> list[int]:
    """Host pids of the live processes in a PID namespace (its `pid:[inode]` name). A zombie whose threads
    are all dead is not alive; a thread-group leader that exited while its threads run still is."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != pidns:
                    continue
                states = [open(f"/proc/{entry}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0]
                          for t in os.listdir(f"/proc/{entry}/task")]
            except OSError:
                continue
            if any(s not in "ZX" for s in states):
                found.append(int(entry))
    return found


def _pidns(out) -> str:
    first = out.stdout.split("\n", 1)[0].split()
    assert first[:1] == ["pidns"], out
    return first[1]


def _boot_processes() -> dict[int, tuple[str, str, str]]:
    """Sandboxed programs on this host: pid -> (PID namespace, Uid line, uid_map as the host sees them; empty
    when the program is in the host's user namespace, where its uids are host uids)."""
    found = {}
    for entry in os.listdir("/proc"):
        try:
            if (entry.isdigit() and b"sys.stdin.readline()" in Path(f"/proc/{entry}/cmdline").read_bytes()
                    and "bwrap" not in os.readlink(f"/proc/{entry}/exe")):  # bwrap has the same command line
                status = Path(f"/proc/{entry}/status").read_text()
                own_userns = os.readlink(f"/proc/{entry}/ns/user") != os.readlink("/proc/self/ns/user")
                found[int(entry)] = (os.readlink(f"/proc/{entry}/ns/pid"), status.split("Uid:")[1].split("\n")[0],
                                     Path(f"/proc/{entry}/uid_map").read_text() if own_userns else "")
        except OSError:
            pass
    return found


def test_the_program_is_not_host_root(sandbox):
    """Seen from the host while it runs: the program's uids are not 0, and in a user namespace of its own,
    that namespace's uid 0 is not host uid 0 either."""
    done = {}
    runner = threading.Thread(target=lambda: done.update(out=sandbox.run(_NS + "import time\ntime.sleep(1.2)")))
    runner.start()
    seen: dict[int, tuple[str, str, str]] = {}
    while runner.is_alive():  # snapshots until it ends: a loaded machine may start it late. The latest of
        seen.update(_boot_processes())  # each process counts: as root, the boot code drops within milliseconds
        time.sleep(0.1)
    ours = [v for v in seen.values() if v[0] == _pidns(done["out"])]
    assert ours, "the program was not seen running"
    for _ns, uids, uid_map in ours:
        assert "0" not in uids.split(), uids
        assert all(line.split()[1] != "0" for line in uid_map.strip().splitlines() if line.split()[0] == "0"), uid_map


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_is_contained(sandbox, name):
    start = time.perf_counter()
    out = sandbox.run(_NS + ATTACKS[name])
    assert "ESCAPED" not in out.stdout, (name, out)
    assert time.perf_counter() - start < 10
    assert _processes_in(_pidns(out)) == [], f"{name}: a process of the run is still alive"


def test_memory_cgroup_caps_the_whole_run():
    """Two tmpfs of 200 MiB each are more than the run's 256 MiB: the memory cgroup stops it, not the mounts."""
    sandbox = Sandbox("bwrap", Limits(timeout_s=5.0, memory_mb=256, tmp_mb=200))
    if "memory.max" not in sandbox.in_force.summary():
        pytest.skip(f"no memory cgroup on this machine: {sandbox.in_force.missing}")
    out = sandbox.run(_NS + _FILL + "print('total', (fill('/tmp') + fill('/dev/shm')) >> 20, 'MiB')")
    assert not out.passed, out
    assert "total" not in out.stdout or int(out.stdout.split("total")[1].split()[0]) < 256, out
    assert _processes_in(_pidns(out)) == []


def test_limits_in_force_are_reported():
    from rapid_cli.sandbox import limits_in_force

    report = limits_in_force(Limits(memory_mb=300, tasks=40))
    text = report.summary()
    assert "RLIMIT_AS 300 MiB" in text and "pidfd" in text
    if os.geteuid() == 0:
        assert "host uid 65534" in text
    else:
        assert "unprivileged user namespace" in text and "per-user kernel quotas" in " ".join(report.missing)
    assert ("pids.max 40" in text) != any("cgroup" in m for m in report.missing)


def test_uid_zero_is_refused():
    if os.geteuid() != 0:
        pytest.skip("only root can pick the jail's uid")
    with pytest.raises(RapidError, match="sandbox_uid=0"):
        Sandbox("bwrap", uid=0)


# The same attacks with rapid itself unprivileged (a laptop): as root, drop to uid 65534 and run them there.
_AS_USER = """import json, sys
from test_sandbox import ATTACKS, _NS, _processes_in, _pidns
from rapid_cli.sandbox import Limits, Sandbox
sandbox = Sandbox("bwrap", Limits(timeout_s=2.0, memory_mb=512))
found = {"in force": sandbox.in_force.summary()}
for name, code in ATTACKS.items():
    out = sandbox.run(_NS + code)
    found[name] = [out.status, out.stdout, _processes_in(_pidns(out))]
print(json.dumps(found))
"""


def _unprivileged_python(env) -> str | None:
    """An interpreter uid 65534 can run, with rapid_cli, numpy and pytest importable (the venv's may live under
    a 0700 home; the system Python of the same minor version reads the same site-packages)."""
    v = sys.version_info
    for python in dict.fromkeys([sys.executable, os.path.realpath(sys.executable),
                                 f"/usr/bin/python{v.major}.{v.minor}"]):
        probe = subprocess.run([*_SETPRIV, python, "-c", "import os, sys, numpy, pytest, rapid_cli.sandbox\n"
                                "assert os.access(os.path.realpath(sys.executable), os.X_OK)"], env=env, cwd="/tmp",
                               capture_output=True)
        if probe.returncode == 0:
            return python
    return None


_SETPRIV = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.slow
def test_attacks_are_contained_when_rapid_is_not_root():
    if os.geteuid() != 0:
        pytest.skip("rapid already runs unprivileged here: every other test in this file covers that case")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed, so this test cannot become uid 65534")
    site = str(Path(np.__file__).resolve().parents[1])
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), site])}
    python = _unprivileged_python(env)
    if python is None:
        pytest.skip(f"no Python that uid 65534 can run with {site} importable")
    run = subprocess.run([*_SETPRIV, python, "-c", _AS_USER], env=env, cwd="/tmp", capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert "unprivileged user namespace" in found.pop("in force")
    for name, (status, stdout, alive) in found.items():
        assert "ESCAPED" not in stdout, (name, status, stdout)
        assert alive == [], f"{name}: {alive} still alive"
    assert "uids [65534, 65534, 65534, 65534] own namespace" in found["host uid is root"][1]
