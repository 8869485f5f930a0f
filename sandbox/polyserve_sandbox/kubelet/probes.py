"""Probes and HTTP hooks, executed as the kubelet's prober executes them.

One attempt (``attempt``): ``httpGet`` against the pod's address (named ports resolved,
``host``, ``scheme``, ``httpHeaders``; 200-399 is success), ``tcpSocket``, ``exec`` (run in
the container's view, with its environment and mounts) and ``grpc`` (the standard health
service, when grpcio is installed), each bounded by ``timeoutSeconds``; failures carry the
kubelet's messages (``HTTP probe failed with statuscode: 503``).

A ``Prober`` is the kubelet's probe worker: it probes every ``periodSeconds`` once the
container has run ``initialDelaySeconds``; a result changes the probe's state only after
``successThreshold`` / ``failureThreshold`` equal results in a row. Readiness starts as
failure, liveness as success; readiness and liveness wait for the startup probe, which stops
once it succeeds; a liveness or startup failure stops the prober (the container restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from polyserve_sandbox.kubelet.backoff import Clock

Obj = dict[str, Any]
Kind = Literal["startup", "readiness", "liveness"]
Exec = Callable[[list[str], float], Awaitable[tuple[int | None, bytes]]]
USER_AGENT = "kube-probe/1.30"
MAX_OUTPUT = 10 * 1024


def port_number(port: object, ports: dict[str, int]) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    if port in ports:
        return ports[str(port)]
    raise LookupError(f"couldn't find port: {port}")


async def _http(
    action: Obj, pod_ip: str, ports: dict[str, int], seconds: float
) -> tuple[bool, str]:
    port = port_number(action.get("port"), ports)
    host = action.get("host") or pod_ip
    scheme = str(action.get("scheme", "HTTP")).lower()
    path = action.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    url = f"{scheme}://{host}:{port}{path}"
    headers = {"Host": f"{host}:{port}", "User-Agent": USER_AGENT, "Accept": "*/*"}
    for header in action.get("httpHeaders") or []:
        headers[header["name"]] = header["value"]
    context = None
    if scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    writer = None
    try:
        async with asyncio.timeout(seconds):
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
            except OSError as exc:
                return False, f'Get "{url}": dial tcp {host}:{port}: connect: {_reason(exc)}'
            lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
            writer.write(("\r\n".join([*lines, "Connection: close", "", ""])).encode())
            status_line = await reader.readline()
            code = int(status_line.split()[1])
    except TimeoutError:
        return False, (
            f'Get "{url}": context deadline exceeded (Client.Timeout exceeded while awaiting '
            "headers)"
        )
    except (OSError, ValueError, IndexError) as exc:
        return False, f'Get "{url}": {_reason(exc) if isinstance(exc, OSError) else "EOF"}'
    finally:
        if writer is not None:
            writer.close()
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


def _reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return (exc.strerror or str(exc)).lower()


async def _tcp(action: Obj, pod_ip: str, ports: dict[str, int], seconds: float) -> tuple[bool, str]:
    port = port_number(action.get("port"), ports)
    host = action.get("host") or pod_ip
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return False, f"dial tcp {host}:{port}: i/o timeout"
    except OSError as exc:
        return False, f"dial tcp {host}:{port}: connect: {_reason(exc)}"
    writer.close()
    return True, ""


async def _grpc(action: Obj, pod_ip: str, seconds: float) -> tuple[bool, str]:
    try:
        import grpc
    except ImportError:
        return False, "grpc probes need grpcio in the sandbox's Python environment"
    service = str(action.get("service") or "").encode()
    request = b"\n" + bytes([len(service)]) + service if service else b""
    target = f"{pod_ip}:{action['port']}"
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            response: bytes = await check(request, timeout=seconds)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, (
                    f'timeout: failed to connect service "{target}" within {seconds:g}s: '
                    "context deadline exceeded"
                )
            return False, f"error: health rpc failed: {exc.details()}"
    serving = response[:2] == b"\x08\x01"
    return (True, "") if serving else (False, "service unhealthy (responded with NOT_SERVING)")


async def attempt(
    action: Obj, *, pod_ip: str, ports: dict[str, int], seconds: float, run: Exec
) -> tuple[bool, str]:
    """One probe (or hook) action: (success, output)."""
    try:
        if "httpGet" in action:
            return await _http(action["httpGet"], pod_ip, ports, seconds)
        if "tcpSocket" in action:
            return await _tcp(action["tcpSocket"], pod_ip, ports, seconds)
        if "grpc" in action:
            return await _grpc(action["grpc"], pod_ip, seconds)
        if "exec" in action:
            command = [str(word) for word in action["exec"].get("command") or []]
            code, output = await run(command, seconds)
            text = output[-MAX_OUTPUT:].decode("utf-8", "replace")
            if code is None:
                return False, f"command {command!r} timed out"
            return code == 0, text
    except LookupError as exc:
        return False, str(exc)
    return False, f"unknown probe action: {sorted(action)}"


class Prober:
    """One probe of one container run; reports state changes and failed attempts."""

    def __init__(
        self,
        kind: Kind,
        spec: Obj,
        check: Callable[[], Awaitable[tuple[bool, str]]],
        *,
        clock: Clock,
        started_at: float,
        gate: Callable[[], bool],
        on_result: Callable[[Kind, bool], None],
        on_failure: Callable[[Kind, str], None],
    ) -> None:
        self.kind, self.spec, self.check = kind, spec, check
        self.clock, self.started_at, self.gate = clock, started_at, gate
        self.on_result, self.on_failure = on_result, on_failure
        self.period = float(spec.get("periodSeconds", 10))
        self.delay = float(spec.get("initialDelaySeconds", 0))
        self.successes = int(spec.get("successThreshold", 1))
        self.failures = int(spec.get("failureThreshold", 3))

    async def run(self) -> None:
        last: bool | None = None
        streak = 0
        while True:
            elapsed = self.clock.monotonic() - self.started_at
            if elapsed >= self.delay and self.gate():
                ok, output = await self.check()
                if not ok:
                    self.on_failure(self.kind, output)
                streak = streak + 1 if ok == last else 1
                last = ok
                if streak >= (self.successes if ok else self.failures):
                    self.on_result(self.kind, ok)
                    if not ok and self.kind != "readiness":
                        return  # on hold until the container restarts
                    if ok and self.kind == "startup":
                        return
            await asyncio.sleep(self.period)


async def cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
