"""The control plane at scale: the real operator against the sandbox's API server with
50 to 2,000 InferenceModels, pods hollow (reported ready, none started). Written into
bench/RESULTS.md (its own fenced section) from bench/control_plane.json, which keeps every
labelled run (``before`` and ``after`` a change).

    .venv/bin/python bench/control_plane.py --label after [--sizes 50,200,500,2000]
        [--rest 60] [--interval 15] [--quiet-load 0.5]

For each size, on a fresh fleet (``pods: hollow``, eight big nodes, no machine node) and a
fresh operator process (``python -m polyserve_operator.main``, its status interval the
production default of 15 s unless ``--interval``):

- time to first status: from the first create to the moment every model has
  ``status.conditions`` (median and last), and to every model Ready;
- at rest (every model Ready, one interval settled, then ``--rest`` seconds): the operator's
  RSS, its CPU (utime + stime from /proc), the API requests per resource per minute (from
  the API server's own ``apiserver_request_total``: the bench's own requests are a LIST and
  a WATCH made before), by verb, and the busiest second (waves of timers show here);
- restart convergence: SIGTERM, a new operator, and what it asks of the API until it has
  been quiet (no write) for ``--settle`` seconds: requests by verb, writes, and the time of
  its last write.

Every point waits for the 1-minute load average to fall under ``--quiet-load`` first (the
machine is shared), up to ``--quiet-wait`` seconds, and records the load it ran under.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client import parser as prometheus_parser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run as bench_run  # noqa: E402

from polyserve_sandbox import cli as sandbox_cli  # noqa: E402

NAMESPACE = "default"
MODELS = f"/apis/polyserve.io/v1alpha1/namespaces/{NAMESPACE}/inferencemodels"
WRITES = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
TICKS = os.sysconf("SC_CLK_TCK")
RESULTS = ROOT / "bench" / "control_plane.json"


def model(index: int) -> dict[str, Any]:
    name = f"model-{index:05d}"
    return {
        "apiVersion": "polyserve.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"team": f"t{index % 10}"}},
        "spec": {
            "modelFormat": {"name": "onnx", "version": "17"},
            "artifact": {"uri": f"s3://models/{name}/v7/model.onnx"},
            "hardware": {"pool": "xeon", "backend": "onnxruntime"},
            "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "config": {
                "max_batch_size": 32,
                "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, 224, 224]}],
                "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [1000]}],
                "dynamic_batching": {"max_queue_delay_microseconds": 2000},
            },
        },
    }


def fleet_config() -> dict[str, Any]:
    big = {"cpu": "2000", "memory": "8Ti", "pods": "1000"}
    return {
        "pods": "hollow",
        "machineNode": False,
        "nodes": [{"name": f"hollow-{i}", "allocatable": big} for i in range(8)],
        "operator": {"enabled": False},
    }


@contextlib.contextmanager
def fleet(folder: Path) -> Iterator[str]:
    """A hollow fleet without an operator; yields its API URL."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sandbox.yaml").write_text(yaml.safe_dump(fleet_config()))
    out = io.StringIO()
    sandbox_cli.up(folder, operator=False, log=out)
    try:
        yield json.loads((folder / "state.json").read_text())["api"]
    finally:
        sandbox_cli.down(folder, log=out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Operator:
    """The real operator as a process of its own, and what /proc says of it."""

    def __init__(self, kubeconfig: Path, interval: float, log: Path) -> None:
        self.kubeconfig, self.interval, self.log = kubeconfig, interval, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("POLYSERVE_OPERATOR_")},
            "POLYSERVE_OPERATOR_KUBECONFIG": str(self.kubeconfig),
            "POLYSERVE_OPERATOR_METRICS_ADDR": "127.0.0.1",
            "POLYSERVE_OPERATOR_METRICS_PORT": "0",
            "POLYSERVE_OPERATOR_STATUS_INTERVAL_SECONDS": str(self.interval),
        }
        liveness = f"http://127.0.0.1:{_free_port()}/healthz"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "polyserve_operator.main", "--liveness", liveness],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(liveness, timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the operator exited; see {self.log}") from None
                time.sleep(0.1)
        raise RuntimeError("the operator did not start in 60 s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cpu_seconds(self) -> float:
        assert self.process is not None
        text = Path(f"/proc/{self.process.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_mb(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def requests_now(url: str) -> Counter[tuple[str, str]]:
    """apiserver_request_total as (verb, resource[/subresource]) -> count."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    found: Counter[tuple[str, str]] = Counter()
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            labels = sample.labels
            resource = labels["resource"] or "(discovery)"
            if labels["subresource"]:
                resource += "/" + labels["subresource"]
            found[(labels["verb"], resource)] += int(sample.value)
    return found


def wait_quiet(limit: float, longest: float) -> float:
    """Wait until the 1-minute load average is under ``limit`` (up to ``longest`` s)."""
    deadline = time.monotonic() + longest
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


@dataclass
class Point:
    size: int
    load_before: float = 0.0
    load_after: float = 0.0
    first_status_median_s: float = 0.0
    first_status_last_s: float = 0.0
    ready_last_s: float = 0.0
    rss_mb: float = 0.0
    cpu_rest_percent: float = 0.0
    rest_seconds: float = 0.0
    rest_requests: dict[str, int] = field(default_factory=dict)
    rest_per_resource_minute: float = 0.0
    rest_peak_per_second: int = 0
    restart_requests: dict[str, int] = field(default_factory=dict)
    restart_writes: int = 0
    restart_last_write_s: float = 0.0
    restart_rss_mb: float = 0.0
    ready: int = 0  # how many models were Ready (all of them when the point finished)
    finished: bool = True


class Statuses:
    """When each model first had conditions and first was Ready (a watch of them all)."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.ready: dict[str, float] = {}

    async def follow(
        self, session: aiohttp.ClientSession, url: str, version: str, size: int
    ) -> None:
        """Until ``size`` models are Ready."""
        path = f"{url}{MODELS}?watch=1&resourceVersion={version}&allowWatchBookmarks=false"
        async with session.get(path, timeout=aiohttp.ClientTimeout(total=None)) as stream:
            async for line in stream.content:
                event = json.loads(line)
                obj = event["object"]
                name = obj["metadata"]["name"]
                conditions = (obj.get("status") or {}).get("conditions") or []
                now = time.monotonic()
                if conditions and name not in self.first:
                    self.first[name] = now
                if name not in self.ready and any(
                    c["type"] == "Ready" and c["status"] == "True" for c in conditions
                ):
                    self.ready[name] = now
                    if len(self.ready) >= size:
                        return


async def create_all(url: str, size: int, point: Point, seconds: float) -> None:
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url + MODELS) as response:
            version = (await response.json())["metadata"]["resourceVersion"]
        statuses = Statuses()
        follower = asyncio.create_task(statuses.follow(session, url, version, size))
        began = time.monotonic()
        headers = {"Content-Type": "application/json"}
        for index in range(size):
            body = json.dumps(model(index))
            async with session.post(url + MODELS, data=body, headers=headers) as response:
                if response.status >= 400:
                    raise RuntimeError(f"create: {response.status} {await response.text()}")
        try:
            await asyncio.wait_for(follower, seconds)
        except TimeoutError:
            point.finished = False  # what was seen is kept; the point ends here
    firsts = sorted(t - began for t in statuses.first.values())
    point.first_status_median_s = statistics.median(firsts) if firsts else 0.0
    point.first_status_last_s = firsts[-1] if firsts else 0.0
    point.ready = len(statuses.ready)
    point.ready_last_s = (
        max(statuses.ready.values()) - began if point.finished and statuses.ready else seconds
    )


def delta(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]]) -> Counter[str]:
    found: Counter[str] = Counter()
    for (verb, resource), count in after.items():
        if count - before.get((verb, resource), 0) > 0:
            found[f"{verb} {resource}"] += count - before.get((verb, resource), 0)
    return found


def at_rest(url: str, operator: Operator, point: Point, seconds: float) -> None:
    """Requests, CPU and the busiest second over ``seconds`` of rest."""
    start_counts = requests_now(url)
    start_cpu = operator.cpu_seconds()
    began = time.monotonic()
    previous = sum(start_counts.values())
    peak = 0
    while time.monotonic() - began < seconds:
        time.sleep(1.0)
        total = sum(requests_now(url).values())
        peak = max(peak, total - previous)
        previous = total
    elapsed = time.monotonic() - began
    counts = delta(requests_now(url), start_counts)
    point.rest_seconds = round(elapsed, 1)
    point.cpu_rest_percent = 100 * (operator.cpu_seconds() - start_cpu) / elapsed
    point.rss_mb = operator.rss_mb()
    point.rest_requests = dict(counts)
    point.rest_per_resource_minute = sum(counts.values()) / point.size / (elapsed / 60)
    point.rest_peak_per_second = peak


def restart(url: str, operator: Operator, point: Point, settle: float, longest: float) -> None:
    """Stop the operator, start a new one, count what it asks until no write for ``settle``."""
    operator.stop()
    before = requests_now(url)
    began = time.monotonic()
    operator.start()
    last_write = began
    writes_seen = 0
    while time.monotonic() - began < longest:
        time.sleep(0.5)
        now = delta(requests_now(url), before)
        writes = sum(c for k, c in now.items() if k.split()[0] in WRITES)
        if writes != writes_seen:
            writes_seen, last_write = writes, time.monotonic()
        elif time.monotonic() - last_write >= settle:
            break
    counts = delta(requests_now(url), before)
    point.restart_requests = dict(counts)
    point.restart_writes = sum(c for k, c in counts.items() if k.split()[0] in WRITES)
    point.restart_last_write_s = round(last_write - began, 1) if writes_seen else 0.0
    point.restart_rss_mb = operator.rss_mb()


def measure(size: int, args: argparse.Namespace) -> Point:
    point = Point(size)
    point.load_before = wait_quiet(args.quiet_load, args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="control-plane-") as folder:
        root = Path(folder)
        with fleet(root / "fleet") as url:
            operator = Operator(root / "fleet" / "kubeconfig", args.interval, root / "operator.log")
            operator.start()
            try:
                asyncio.run(create_all(url, size, point, seconds=max(300.0, size * 0.5)))
                if point.finished:
                    time.sleep(args.interval + 5)  # one timer round after the last Ready
                    at_rest(url, operator, point, args.rest)
                    restart(url, operator, point, args.settle, longest=max(120.0, size * 0.3))
            except BaseException:
                print((root / "operator.log").read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                operator.stop()
    point.load_after = os.getloadavg()[0]
    return point


def _top(requests: dict[str, int], size: int, minutes: float, count: int = 4) -> str:
    ordered = sorted(requests.items(), key=lambda item: -item[1])[:count]
    if not ordered:
        return "none"
    return ", ".join(f"{k} {v / size / minutes:.2f}" for k, v in ordered)


def render(runs: dict[str, Any]) -> list[str]:
    lines = [
        "## The control plane at scale (issue 13)",
        "",
        "Generated by `bench/control_plane.py`: the real operator (its own process, status "
        "interval 15 s) against the sandbox's API server (another process), with pods hollow "
        "(`pods: hollow`: the sandbox's scheduler, Deployment controller and a kubelet that "
        "reports pods ready without starting them); N InferenceModels (2 replicas each) "
        "created at once on a fresh fleet and operator per point. Requests are the API "
        "server's own `apiserver_request_total`. Rest: one timer interval after the last "
        "Ready, then the window shown. Restart: SIGTERM, a new operator, counted until it has "
        "made no write for 20 s. Load: the 1-minute load average before / after the point "
        "(2 cores, shared).",
    ]
    for label, run in runs.items():
        lines += [
            "",
            f"### {label}: {run['note']}",
            "",
            "| models | first status median / last (s) | all Ready (s) | RSS (MB) | CPU at rest "
            "| requests / model / min at rest | busiest second | restart: requests, writes, "
            "last write (s) | load |",
            "|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for p in run["points"]:
            if not p.get("finished", True):
                lines.append(
                    f"| {p['size']} | {p['first_status_median_s']:.1f} / "
                    f"{p['first_status_last_s']:.1f} | not finished: {p['ready']} Ready in "
                    f"{p['ready_last_s']:.0f} | | | | | | {p['load_before']:.2f} / "
                    f"{p['load_after']:.2f} |"
                )
                continue
            restart_total = sum(p["restart_requests"].values())
            lines.append(
                f"| {p['size']} | {p['first_status_median_s']:.1f} / "
                f"{p['first_status_last_s']:.1f} | {p['ready_last_s']:.1f} | {p['rss_mb']:.0f} "
                f"| {p['cpu_rest_percent']:.1f}% | {p['rest_per_resource_minute']:.2f} "
                f"| {p['rest_peak_per_second']} | {restart_total}, {p['restart_writes']}, "
                f"{p['restart_last_write_s']:.1f} | {p['load_before']:.2f} / "
                f"{p['load_after']:.2f} |"
            )
        lines += ["", "At rest, by verb and resource (requests per model per minute):", ""]
        for p in run["points"]:
            if p.get("finished", True):
                minutes = p["rest_seconds"] / 60
                lines.append(f"- {p['size']}: {_top(p['rest_requests'], p['size'], minutes)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="the run's name in the results")
    parser.add_argument("--note", default="", help="what the run measured (a commit, a change)")
    parser.add_argument("--sizes", default="50,200,500,2000")
    parser.add_argument("--rest", type=float, default=60.0, help="seconds measured at rest")
    parser.add_argument("--interval", type=float, default=15.0, help="the operator's interval")
    parser.add_argument("--settle", type=float, default=20.0)
    parser.add_argument("--quiet-load", type=float, default=0.5)
    parser.add_argument("--quiet-wait", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs: dict[str, Any] = json.loads(args.results.read_text()) if args.results.exists() else {}
    points = []
    for size in (int(s) for s in args.sizes.split(",")):
        point = measure(size, args)
        print(json.dumps(asdict(point)), flush=True)
        points.append(asdict(point))
    runs[args.label] = {"note": args.note, "points": points}
    args.results.write_text(json.dumps(runs, indent=1) + "\n")
    lines = render(runs)
    print("\n".join(lines))
    bench_run.write_section(args.out, "control_plane", lines)


if __name__ == "__main__":
    main()
