"""A closed-loop client for the e2e suite: it calls a model through its Service the whole
time a test runs and records every outcome with its time, so a test can say which requests
failed and when (e.g. only while a canary had traffic)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


@dataclass(frozen=True)
class Outcome:
    at: float
    """time.monotonic() when the answer (or the error) came."""
    protocol: str
    batch: int
    ok: bool
    scale: float | None
    """OUTPUT0 / INPUT0 of the answer (which revision answered), when it succeeded."""
    error: str = ""


@dataclass
class ClosedLoop:
    """``clients`` threads calling ``model`` over HTTP and/or gRPC (whichever address is given), one
    request after another, each with a batch size from ``batches`` in turn. A new connection
    every ``reconnect`` requests, so a replica-ratio split (per connection) is sampled."""

    http: str | None
    model: str
    grpc: str | None = None
    batches: tuple[int, ...] = (1,)
    clients: int = 2
    reconnect: int = 5
    pace: float = 0.0
    """Seconds each client waits between requests (0: closed loop, as fast as answered)."""
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> ClosedLoop:
        for i in range(self.clients):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            self._threads.append(thread)
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def counts(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        with self._lock:
            chosen = [o for o in self.outcomes if since <= o.at <= until]
        return Counter("ok" if o.ok else f"failed: {o.error}" for o in chosen)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.ok]

    def served(self, scale: float) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.ok and o.scale == scale)

    def total(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _run(self, index: int) -> None:
        protocols: list[tuple[str, Any, str]] = []
        if self.http:
            protocols.append(("http", httpclient, self.http))
        if self.grpc:
            protocols.append(("grpc", grpcclient, self.grpc))
        turn = index
        while not self._stop.is_set():
            name, module, address = protocols[turn % len(protocols)]
            client = module.InferenceServerClient(address)
            try:
                for _ in range(self.reconnect):
                    if self._stop.is_set():
                        break
                    batch = self.batches[turn % len(self.batches)]
                    turn += 1
                    self._record(self._call(name, module, client, batch))
                    if self.pace:
                        self._stop.wait(self.pace)
            finally:
                client.close()

    def _call(self, name: str, module: Any, client: Any, batch: int) -> Outcome:
        x = np.arange(1, 4 * batch + 1, dtype=np.float32).reshape(batch, 4)
        tensor = module.InferInput("INPUT0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            y = client.infer(self.model, [tensor]).as_numpy("OUTPUT0")
        except Exception as exc:  # every failure is recorded; tests decide which they allow
            return Outcome(
                time.monotonic(), name, batch, False, None, f"{type(exc).__name__}: {exc}"[:200]
            )
        return Outcome(time.monotonic(), name, batch, True, round(float(y[0, 0] / x[0, 0]), 3))
