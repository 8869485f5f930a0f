"""Time for the kubelet: an injectable clock, and the kubelet's restart back-off.

The back-off follows the kubelet's ``flowcontrol.Backoff`` as ``doBackOff`` uses it: the
first exit of a container restarts it at once and opens a window of ``initial`` seconds;
an exit inside the window waits for it to close (``CrashLoopBackOff``), and each restart
doubles the window up to ``cap``. A container that ran for more than twice the cap since
its last restart (10 minutes with the kubelet's 300 s) starts again from ``initial``.
Image pulls back off the same way (``ImagePullBackOff``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic scale: windows, deadlines and durations."""
        ...

    def wall(self) -> datetime:
        """The time of day, only for the timestamps written into statuses and events."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)


def timestamp(moment: datetime) -> str:
    """RFC 3339 in seconds, as Kubernetes writes ``metav1.Time``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Backoff:
    """The kubelet's back-off settings; the fleet shortens them for tests and demos."""

    initial: float = 10.0
    """Seconds of the first window after a restart (the kubelet's 10 s)."""
    cap: float = 300.0
    """Longest window in seconds (the kubelet's 5 minutes)."""
    retry: float = 2.0
    """Seconds between attempts to set up what a pod waits for (a missing ConfigMap,
    Secret or claim, a container config error). The kubelet's volume manager retries with
    its own back-off from 0.5 s; a fixed short period keeps a sandbox pod responsive."""

    @property
    def reset_after(self) -> float:
        """A container that ran this long since its last restart starts a fresh back-off
        (the kubelet: twice the cap)."""
        return 2 * self.cap


class Tracker:
    """One container's (or one image's) back-off window."""

    def __init__(self, policy: Backoff) -> None:
        self.policy = policy
        self.window: float | None = None
        self._last_update = 0.0

    def _expired(self, event: float) -> bool:
        return self.window is None or event - self._last_update > self.policy.reset_after

    def remaining(self, event: float, now: float) -> float:
        """Seconds still to wait after an exit (or a failed pull) at ``event``; 0: go."""
        if self._expired(event):
            return 0.0
        assert self.window is not None
        return max(0.0, self.window - (now - event))

    def next(self, event: float, now: float) -> None:
        """Record a restart (or a pull attempt) now, after an exit at ``event``."""
        if self._expired(event):
            self.window = self.policy.initial
        else:
            assert self.window is not None
            self.window = min(self.window * 2, self.policy.cap)
        self._last_update = now

    def describe(self) -> str:
        """The window as Go prints a duration (``10s``, ``2m40s``), for messages."""
        return go_duration(self.window or self.policy.initial)


def go_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:g}s"
    if minutes:
        text = f"{int(minutes)}m{text}"
    return text
