"""The sandbox's ``runc``: turns one container spec into one process. Standard library only.

Run as ``python -I -S launcher.py`` with the spec (JSON) on stdin and a report pipe on the
descriptor the spec names. It reports JSON lines on that pipe: ``{"pid": N}`` (the
container's process, as the host sees it), ``{"warning": ...}`` and ``{"error": ...,
"stage": "create" | "start"}``; the pipe closes when the container's program has been
exec'd (or failed to be).

As root (``isolate``), like a runtime: the launcher joins the container's cgroups, enters
a new mount namespace and a new PID namespace, applies the binds (read-only volumes
read-only, and the root file system read-only for ``readOnlyRootFilesystem``), and forks
the container's process, which is PID 1 of its namespace (it gets SIGTERM only if it handles
it, as in a real container). The launcher stays as its parent and exits with its status
(128 + signal when killed, as runtimes report it). When the launcher dies, for any reason,
the kernel kills the container's process (``PR_SET_PDEATHSIG``), and with it every process
of its PID namespace; the launcher itself dies with the sandbox the same way. Nothing is
left behind even when the sandbox is killed.

Without root: no namespaces and no user switch; the launcher sets the parent-death signal
and execs the program in its place.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import stat
import sys
from typing import Any

PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
# statvfs flags that are also mount flags (same bits): kept when remounting read-only.
KEPT_FLAGS = 2 | 4 | 8 | 16 | 64 | 1024 | 2048 | 4096
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUNC = (
    "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
    "runc create failed: unable to start container process: "
)

_libc = ctypes.CDLL(None, use_errno=True)


class Failure(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def _check(result: int, what: str, stage: str = "create") -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise Failure(stage, f"{what}: {os.strerror(errno).lower()}")


def _report(fd: int, **message: Any) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")


def _mount(source: str | None, target: str, flags: int) -> int:
    src = source.encode() if source is not None else None
    return int(_libc.mount(src, target.encode(), None, flags, None))


def _join_cgroups(paths: list[str]) -> None:
    for path in paths:
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))


def _isolate(binds: list[list[Any]], read_only_root: bool) -> None:
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare")
    _check(_mount(None, "/", MS_REC | MS_PRIVATE), "making / private")
    for source, target, read_only in binds:
        where = f'error during container init: error mounting "{source}" to rootfs at "{target}"'
        _check(_mount(source, target, MS_BIND | MS_REC), RUNC + where)
        if read_only:
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | (os.statvfs(target).f_flag & KEPT_FLAGS)
            _check(_mount(None, target, flags), RUNC + where)
    if read_only_root:
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | (os.statvfs("/").f_flag & KEPT_FLAGS)
        _check(_mount(None, "/", flags), RUNC + "error during container init: read-only root")


def _find(program: str, env: dict[str, str], cwd: str) -> str | None:
    if "/" in program:
        path = os.path.join(cwd, program)
        return path if os.path.exists(path) else None
    for folder in env.get("PATH", DEFAULT_PATH).split(":"):
        path = os.path.join(folder or ".", program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _blocked(path: str, mode: int) -> str | None:
    """Why the effective user cannot run/read ``path`` (checked by the kernel), or None."""
    if os.access(path, mode, effective_ids=True):
        return None
    real = os.path.realpath(path)
    folder = os.path.dirname(real)
    parts = folder.split("/")
    for i in range(2, len(parts) + 1):
        ancestor = "/".join(parts[:i]) or "/"
        if not os.access(ancestor, os.X_OK, effective_ids=True):
            info = os.stat(ancestor)
            return (
                f"{ancestor} is mode {stat.S_IMODE(info.st_mode):04o}, owned by uid {info.st_uid}"
            )
    return f"{real} is not {'executable' if mode == os.X_OK else 'readable'} by it"


def _why_not(path: str, env: dict[str, str], depth: int = 0) -> str | None:
    """Why the effective user cannot exec ``path``, following ``#!`` interpreters."""
    reason = _blocked(path, os.X_OK)
    if reason is not None or depth > 3:
        return reason
    with open(path, "rb") as program:
        head = program.read(256)
    if not head.startswith(b"#!"):
        return None
    reason = _blocked(path, os.R_OK)
    if reason is not None:
        return reason
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    interpreter = words[0]
    if os.path.basename(interpreter) == "env" and len(words) > 1:
        found = _find(words[1], env, "/")
        if found is None:
            return None
        interpreter = found
    inner = _why_not(interpreter, env, depth + 1)
    return None if inner is None else f"its interpreter {interpreter}: {inner}"


def _unreachable(paths: list[str]) -> str | None:
    """The first of the container's folders the effective user cannot reach, and why."""
    for path in paths:
        mode = os.X_OK if os.path.isdir(path) else os.R_OK
        reason = _blocked(path, mode)
        if reason is not None:
            return f"cannot reach {path}: {reason}"
    return None


def _switch_user(user: dict[str, Any], program: str, spec: dict[str, Any], report: int) -> None:
    uid, gid, groups = int(user["uid"]), int(user["gid"]), [int(g) for g in user["groups"]]
    saved = os.getgroups()
    os.setgroups(groups)
    os.setegid(gid)
    os.seteuid(uid)
    try:
        reason = _why_not(program, spec["env"])
        if reason is not None:
            reason = f"cannot execute {program} ({reason})"
        else:
            reason = _unreachable([spec["cwd"], *(spec.get("reach") or [])])
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved)
    if reason is not None:
        _report(
            report,
            warning=(
                f"runAsUser {uid} {reason}: the sandbox runs this container as uid "
                f"{os.getuid()}, its own user, instead. To run it as {uid}, keep the image's "
                "programs and the sandbox's folder where that user can read them (e.g. not "
                "under /root), or drop runAsUser from the securityContext"
            ),
        )
        return
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)


def _exec(spec: dict[str, Any], report: int) -> None:
    """In the container's process: become the user, enter the folder, exec."""
    env: dict[str, str] = spec["env"]
    argv: list[str] = spec["argv"]
    cwd: str = spec["cwd"]
    program = _find(argv[0], env, cwd)
    if program is None:
        raise Failure("start", f'{RUNC}exec: "{argv[0]}": executable file not found in $PATH')
    if spec.get("user") and os.geteuid() == 0:
        _switch_user(spec["user"], program, spec, report)
    _die_with_parent()  # again: a change of credentials clears it
    try:
        os.chdir(cwd)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        message = f'chdir to cwd ("{cwd}") set in config.json failed: {reason}'
        raise Failure("start", RUNC + message) from exc
    for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execve(program, argv, env)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise Failure("start", f'{RUNC}exec: "{argv[0]}": {reason}') from exc


def _exit_like(status: int) -> None:
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    report: int = spec["report_fd"]
    os.set_inheritable(report, False)
    try:
        _die_with_parent()
        if os.getppid() != spec["parent"]:
            os._exit(1)  # the sandbox is already gone
        _join_cgroups(spec.get("cgroups") or [])
        if not spec.get("isolate"):
            _exec(spec, report)
        _isolate(spec.get("binds") or [], bool(spec.get("read_only_root")))
    except Failure as exc:
        _report(report, stage=exc.stage, error=str(exc))
        os._exit(127)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        try:
            _die_with_parent()
            _exec(spec, report)
        except Failure as exc:
            _report(report, stage=exc.stage, error=str(exc))
        except BaseException as exc:  # never fall back into the launcher's code
            _report(report, stage="start", error=f"{RUNC}{exc}")
        os._exit(127)
    _report(report, pid=child)
    os.close(report)
    while True:
        try:
            _, status = os.waitpid(child, 0)
        except ChildProcessError:
            os._exit(137)
        _exit_like(status)


if __name__ == "__main__":
    main()
