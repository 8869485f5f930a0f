"""Container logs on disk, ``kubectl logs [-p] [--tail]``, and termination messages.

Each run of a container writes stdout and stderr to ``logs/<container>/<n>.log`` (n is the
restartCount of that run). The newest file is the current log (also while the container
waits in CrashLoopBackOff, as ``kubectl logs`` shows the run that just ended), the one
before it is ``--previous``; older runs are removed, as the kubelet keeps two.

A termination message is the termination-message file when the process wrote one (the
kubelet reads at most 4096 bytes), else, under ``FallbackToLogsOnError`` and a failed exit,
the last 80 lines of the log capped at 2048 bytes, the kubelet's limits.
"""

from __future__ import annotations

import os
from pathlib import Path

MESSAGE_FILE_LIMIT = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048


class LogsUnavailable(Exception):
    """No such log; the message is the API server's (a 400 for ``kubectl logs``)."""


def runs(folder: Path) -> list[Path]:
    """A container's log files, oldest first."""
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix == ".log" and p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


def open_run(folder: Path, restart_count: int) -> int:
    """A new log file for one run (a descriptor for the process); prunes older runs."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in runs(folder)[:-1]:
        if int(old.stem) < restart_count - 1:
            old.unlink(missing_ok=True)
    path = folder / f"{restart_count}.log"
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def tail(data: bytes, lines: int | None) -> bytes:
    if lines is None:
        return data
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def read(
    folder: Path, *, previous: bool, tail_lines: int | None, pod: str, container: str
) -> bytes:
    files = runs(folder)
    if previous:
        if len(files) < 2:
            raise LogsUnavailable(
                f'previous terminated container "{container}" in pod "{pod}" not found'
            )
        return tail(files[-2].read_bytes(), tail_lines)
    if not files:
        raise LogsUnavailable(f'container "{container}" in pod "{pod}" is waiting to start')
    return tail(files[-1].read_bytes(), tail_lines)


def fallback_message(log: Path) -> str:
    """The tail of a log, within the kubelet's limits for a termination message."""
    try:
        size = log.stat().st_size
        with log.open("rb") as file:
            file.seek(max(0, size - FALLBACK_LINES * 1024))
            data = file.read()
    except OSError:
        return ""
    data = tail(data, FALLBACK_LINES)[-FALLBACK_BYTES:]
    return data.decode("utf-8", "replace")


def termination_message(message_file: Path, log: Path, *, fallback: bool, failed: bool) -> str:
    try:
        with message_file.open("rb") as file:
            written = file.read(MESSAGE_FILE_LIMIT)
    except OSError:
        written = b""
    if written:
        return written.decode("utf-8", "replace")
    if fallback and failed:
        return fallback_message(log)
    return ""
