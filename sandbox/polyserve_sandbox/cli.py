"""``polyserve sandbox up|down|status|endpoints|logs|load``: the local fleet from the command line.

``up`` starts the fleet (``python -m polyserve_sandbox serve``) as a background process
whose state, logs and kubeconfig live under ``--dir`` (``.polyserve-sandbox/``), and returns
once the API answers; ``down`` stops it and every process it started, and checks that none
is left. The other commands read the running fleet through its API server, as kubectl does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(".polyserve-sandbox")
STATE = "state.json"
PID = "sandbox.pid"
UP_TIMEOUT_SECONDS = 120.0
DOWN_TIMEOUT_SECONDS = 90.0


class SandboxError(Exception):
    """A command that cannot do what was asked; the message says what to do."""


def _state(folder: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return {}
    return data


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"polyserve_sandbox" in cmdline


def _api(folder: Path, path: str, timeout: float = 10.0) -> Any:
    state = _state(folder)
    if not _alive(state.get("pid")) or not state.get("api"):
        raise SandboxError(f"no sandbox is up in {folder}: start one with `polyserve sandbox up`")
    try:
        with urllib.request.urlopen(state["api"] + path, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", str(exc))
        except ValueError:
            message = str(exc)
        raise SandboxError(message) from exc
    except OSError as exc:
        raise SandboxError(f"the sandbox API at {state['api']} does not answer: {exc}") from exc
    return body


def up(folder: Path, *, operator: bool, log: Any = sys.stdout) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    running = _state(folder).get("pid") or _pid(folder)
    if _alive(running):
        print(f"the sandbox in {folder} is already up (pid {running})", file=log)
        print(f"kubeconfig: {folder.resolve() / 'kubeconfig'}", file=log)
        return 0
    (folder / STATE).unlink(missing_ok=True)
    (folder / PID).unlink(missing_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "polyserve_sandbox", "serve", "--daemon", "--dir", str(folder)]
    if not operator:
        command.append("--no-operator")
    with open(folder / "logs" / "sandbox.log", "ab") as out:
        # `serve --daemon` forks and returns at once; the fleet runs on in its own session.
        subprocess.run(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=True
        )
    started = time.monotonic()
    last_note = started
    while time.monotonic() - started < UP_TIMEOUT_SECONDS:
        state = _state(folder)
        if state.get("ready"):
            kubeconfig = folder.resolve() / "kubeconfig"
            print(f"sandbox up in {time.monotonic() - started:.1f} s: API {state['api']}", file=log)
            print(f"kubeconfig: {kubeconfig}", file=log)
            print(f"  export KUBECONFIG={kubeconfig}; kubectl get nodes", file=log)
            return 0
        daemon = _pid(folder)
        if daemon is not None and not _alive(daemon):
            tail = (folder / "logs" / "sandbox.log").read_text(errors="replace")[-3000:]
            raise SandboxError(f"the sandbox exited while starting:\n{tail}")
        if time.monotonic() - last_note > 10:
            print("  still starting (see logs/sandbox.log) ...", file=log)
            last_note = time.monotonic()
        time.sleep(0.1)
    daemon = _pid(folder)
    if daemon is not None and _alive(daemon):
        os.kill(daemon, signal.SIGTERM)
    raise SandboxError(
        f"the sandbox did not come up in {UP_TIMEOUT_SECONDS:.0f} s; see {folder}/logs/sandbox.log"
    )


def _pid(folder: Path) -> int | None:
    try:
        return int((folder / PID).read_text())
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, from /proc; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process under ``root`` (pid -> start time, to tell a reused pid apart)."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, started in children.get(todo.pop(), []):
            if pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def _still_running(processes: dict[int, int]) -> list[int]:
    return [
        pid
        for pid, started in processes.items()
        if (stat := _stat(pid)) is not None and stat[1] == started
    ]


def down(folder: Path, log: Any = sys.stdout) -> int:
    pid = _state(folder).get("pid") or _pid(folder)
    if not _alive(pid):
        print(f"no sandbox is up in {folder}", file=log)
        return 0
    assert isinstance(pid, int)
    # The fleet stops its pods itself; whatever it started and leaves behind (it crashed,
    # or a pod ignored its grace period) is killed after it exits.
    started_by_fleet = _descendants(pid)
    os.kill(pid, signal.SIGTERM)
    started = time.monotonic()
    print(f"stopping the sandbox (pid {pid}) and its pods ...", file=log)
    while _alive(pid) and time.monotonic() - started < DOWN_TIMEOUT_SECONDS:
        time.sleep(0.1)
    if _alive(pid):
        print("  it did not stop in time: killing it", file=log)
        started_by_fleet.update(_descendants(pid))
        with _quiet():
            os.killpg(pid, signal.SIGKILL)
    leftovers = _still_running(started_by_fleet)
    for stray in leftovers:
        with _quiet():
            os.kill(stray, signal.SIGKILL)
    (folder / STATE).unlink(missing_ok=True)
    (folder / PID).unlink(missing_ok=True)
    note = f"; killed {len(leftovers)} process(es) it left behind" if leftovers else ""
    print(f"sandbox down in {time.monotonic() - started:.1f} s{note}", file=log)
    return 0


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, value: object, traceback: object) -> bool:
        return isinstance(value, ProcessLookupError | PermissionError)


def _service_rows(folder: Path) -> list[dict[str, Any]]:
    services = json.loads(_api(folder, "/api/v1/services"))["items"]
    found = json.loads(_api(folder, "/api/v1/endpoints"))["items"]
    ready = {
        (e["metadata"]["namespace"], e["metadata"]["name"], p.get("name")): len(
            s.get("addresses") or []
        )
        for e in found
        for s in e.get("subsets") or []
        for p in s.get("ports") or []
    }
    rows = []
    for service in services:
        meta, spec = service["metadata"], service.get("spec") or {}
        address = spec.get("clusterIP")
        if not address or address == "None":
            continue
        for port in spec.get("ports") or []:
            rows.append(
                {
                    "kind": "Service",
                    "namespace": meta["namespace"],
                    "service": meta["name"],
                    "port": port.get("name") or str(port["port"]),
                    "address": f"{address}:{port['port']}",
                    "ready": ready.get((meta["namespace"], meta["name"], port.get("name")), 0),
                }
            )
    return rows


def _gateway_rows(folder: Path) -> list[dict[str, Any]]:
    """One row per listener of each Gateway that has an address (the sandbox's own class)."""
    gateways = json.loads(_api(folder, "/apis/gateway.networking.k8s.io/v1/gateways"))["items"]
    rows = []
    for gateway in gateways:
        meta, status = gateway["metadata"], gateway.get("status") or {}
        addresses = [a.get("value") for a in status.get("addresses") or [] if a.get("value")]
        if not addresses:
            continue
        listed = {ls.get("name"): ls for ls in status.get("listeners") or []}
        for listener in (gateway.get("spec") or {}).get("listeners") or []:
            state = listed.get(listener.get("name")) or {}
            programmed = any(
                c.get("type") == "Programmed" and c.get("status") == "True"
                for c in state.get("conditions") or []
            )
            rows.append(
                {
                    "kind": "Gateway",
                    "namespace": meta["namespace"],
                    "gateway": meta["name"],
                    "listener": listener.get("name"),
                    # What readers of Service rows key on, so they can skip these rows.
                    "service": None,
                    "port": listener.get("name"),
                    "address": f"{addresses[0]}:{listener.get('port')}",
                    "protocol": listener.get("protocol"),
                    "routes": state.get("attachedRoutes", 0),
                    "programmed": programmed,
                }
            )
    return rows


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], log: Any) -> None:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=log,
        )


def endpoints(folder: Path, output: str, log: Any = sys.stdout) -> int:
    """Each Service port's and each Gateway listener's local address."""
    services, gateways = _service_rows(folder), _gateway_rows(folder)
    if output == "json":
        print(json.dumps(services + gateways, indent=2), file=log)
        return 0
    _print_table(
        ("NAMESPACE", "SERVICE", "PORT", "ADDRESS", "READY"),
        [
            (r["namespace"], r["service"], r["port"], r["address"], str(r["ready"]))
            for r in services
        ],
        log,
    )
    if gateways:
        print(file=log)
        _print_table(
            ("NAMESPACE", "GATEWAY", "LISTENER", "ADDRESS", "PROTOCOL", "ROUTES", "PROGRAMMED"),
            [
                (
                    r["namespace"],
                    r["gateway"],
                    str(r["listener"]),
                    r["address"],
                    str(r["protocol"]),
                    str(r["routes"]),
                    str(r["programmed"]),
                )
                for r in gateways
            ],
            log,
        )
    return 0


def logs(
    folder: Path,
    pod: str,
    namespace: str,
    container: str | None,
    previous: bool,
    tail: int | None,
    log: Any = sys.stdout,
) -> int:
    query = []
    if container:
        query.append(f"container={container}")
    if previous:
        query.append("previous=true")
    if tail is not None:
        query.append(f"tailLines={tail}")
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log" + (
        "?" + "&".join(query) if query else ""
    )
    sys.stdout.flush()
    log.write(_api(folder, path).decode(errors="replace"))
    return 0


def status(folder: Path, log: Any = sys.stdout) -> int:
    state = _state(folder)
    if not _alive(state.get("pid")):
        print(f"down (no sandbox in {folder})", file=log)
        return 3
    nodes = json.loads(_api(folder, "/api/v1/nodes"))["items"]
    pods = json.loads(_api(folder, "/api/v1/pods"))["items"]
    print(f"up: pid {state['pid']}, API {state['api']}, network {state.get('network')}", file=log)
    print(f"kubeconfig: {folder.resolve() / 'kubeconfig'}", file=log)
    names = ", ".join(n["metadata"]["name"] for n in nodes)
    print(f"{len(nodes)} node(s): {names}; {len(pods)} pod(s)", file=log)
    return 0


def load_service(args: argparse.Namespace) -> int:
    """``load``: the Service's address for the protocol, then the load generator."""
    from polyserve_sandbox import load

    port = args.protocol
    rows = [
        r
        for r in _service_rows(args.dir)
        if (r["namespace"], r["service"], r["port"]) == (args.namespace, args.service, port)
    ]
    if not rows:
        raise SandboxError(
            f"no Service {args.namespace}/{args.service} with a port named {port!r}: "
            "see `polyserve sandbox endpoints`"
        )
    try:
        return load.run(
            rows[0]["address"],
            args.model or args.service,
            rate=args.rate,
            seconds=args.seconds,
            concurrency=args.concurrency,
            protocol=args.protocol,
            log=lambda line: print(line, flush=True),
        )
    except load.LoadError as exc:
        raise SandboxError(str(exc)) from exc


def add_commands(commands: Any) -> None:
    """The ``sandbox`` subcommand and its own subcommands, on a parent argparse parser."""
    sandbox = commands.add_parser(
        "sandbox", help="a local fleet on this machine: API server, nodes, pods as processes"
    )
    verbs = sandbox.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state, logs, kubeconfig")
    start = verbs.add_parser("up", parents=[common], help="start the fleet and the operator")
    start.add_argument(
        "--no-operator", action="store_true", help="start everything but the operator"
    )
    verbs.add_parser("down", parents=[common], help="stop the fleet and every process it started")
    verbs.add_parser("status", parents=[common], help="is it up, and what it holds")
    listing = verbs.add_parser(
        "endpoints",
        parents=[common],
        help="each Service port's and Gateway listener's local address",
    )
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    reading = verbs.add_parser("logs", parents=[common], help="a pod's container log")
    reading.add_argument("pod")
    reading.add_argument("-n", "--namespace", default="default")
    reading.add_argument("-c", "--container")
    reading.add_argument("-p", "--previous", action="store_true")
    reading.add_argument("--tail", type=int)
    loading = verbs.add_parser(
        "load",
        parents=[common],
        help="send requests to a model through its Service at a steady rate, with progress",
    )
    loading.add_argument("service", help="the Service (an InferenceModel's name)")
    loading.add_argument("-n", "--namespace", default="default")
    loading.add_argument("--model", help="the model to call (default: the Service's name)")
    loading.add_argument("--rate", type=float, required=True, help="requests per second")
    loading.add_argument(
        "--for", dest="seconds", type=float, default=60.0, help="seconds (default 60)"
    )
    loading.add_argument("--protocol", choices=["http", "grpc"], default="http")
    loading.add_argument(
        "--concurrency", type=int, default=16, help="most requests in flight (default 16)"
    )


def run(args: argparse.Namespace) -> int:
    """Carry out a parsed ``sandbox`` command; errors are one line on stderr, status 1."""
    try:
        if args.verb == "up":
            return up(args.dir, operator=not args.no_operator)
        if args.verb == "down":
            return down(args.dir)
        if args.verb == "status":
            return status(args.dir)
        if args.verb == "endpoints":
            return endpoints(args.dir, args.output)
        if args.verb == "load":
            return load_service(args)
        return logs(args.dir, args.pod, args.namespace, args.container, args.previous, args.tail)
    except SandboxError as exc:
        print(f"polyserve sandbox {args.verb}: {exc}", file=sys.stderr)
        return 1
