"""A real Prometheus for tests: Debian's ``prometheus`` scraping local processes.

``prometheus`` (the fixture) starts one on 127.0.0.1 with a free port, a temporary storage
folder, and a scrape and rule evaluation interval of one second; targets are listed per job
in file-based discovery files, so a test can change them while it runs (a canary's pods
come and go). Queries go through the HTTP API; a PromQL error raises ``PromQLError``, so a
query that Prometheus refuses never passes as "no data". A test skips, saying why, when the
binary is missing (``apt-get install -y --no-install-recommends prometheus``).

    def test_rate(prometheus, start_worker):
        worker = start_worker(repo)
        prom = prometheus([Target(f"127.0.0.1:{worker.worker.metrics_port}", job="w")])
        prom.wait_for_targets()
        rows = prom.wait_for('rate(nv_inference_request_success[5s]) > 0')
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

#: Seconds to wait for Prometheus to answer, for targets to be scraped, for data to show.
DEADLINE_SECONDS = 30.0
POLL_SECONDS = 0.2


class PromQLError(Exception):
    """Prometheus refused a query or an API call; the message is its error."""


@dataclass(frozen=True)
class Target:
    """One scrape target: ``host:port``, its job, and the labels its series get (as a
    PodMonitor's relabelings would give them in a cluster)."""

    address: str
    job: str = "polyserve"
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"
    #: Keep the scraped series' own labels over the target's (the operator's series carry
    #: ``namespace`` and ``name`` of the resources they describe).
    honor_labels: bool = False


class Prometheus:
    """A running Prometheus server (see ``start``)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, folder: Path) -> None:
        self.process = process
        self.url = url
        self.folder = folder

    # -- the HTTP API ---------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; PromQLError when Prometheus says error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, with Prometheus' reason
            body = json.load(exc)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')} ({params or path})")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query now: the result's rows (``metric`` and ``value``), possibly none."""
        data = self.api("query", query=promql)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        rows: list[dict[str, Any]] = data["result"]
        return rows

    def value(self, promql: str) -> float:
        """The single value an instant query returns; AssertionError unless exactly one."""
        rows = self.query(promql)
        assert len(rows) == 1, f"{promql} returned {len(rows)} rows: {rows}"
        return float(rows[0]["value"][1])

    def wait_for(
        self, promql: str, until: Callable[[list[dict[str, Any]]], bool] = bool
    ) -> list[dict[str, Any]]:
        """Query until the rows satisfy ``until`` (by default: there are some), within the
        deadline; a PromQL error raises at once."""
        rows: list[dict[str, Any]] = []

        def done() -> bool:
            nonlocal rows
            rows = self.query(promql)
            return until(rows)

        self._poll(done, f"{promql} (last result: {rows})")
        return rows

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def wait_for_targets(self, addresses: Sequence[str] | None = None) -> None:
        """Wait until the targets (all of them, or those at ``addresses``) have been scraped
        successfully at least once."""

        def up() -> bool:
            wanted = [
                t
                for t in self.targets()
                if addresses is None or t["discoveredLabels"]["__address__"] in addresses
            ]
            expected = len(addresses) if addresses is not None else 1
            return len(wanted) >= expected and all(t["health"] == "up" for t in wanted)

        self._poll(up, f"targets up: {addresses or 'all'}")

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, with its group's name under ``group``."""
        groups = self.api("rules")["groups"]
        return [{**rule, "group": g["name"]} for g in groups for rule in g["rules"]]

    def set_targets(self, job: str, targets: Sequence[Target]) -> None:
        """Replace a job's targets (the job must have been given to ``start``); Prometheus
        reads the discovery file again within a second."""
        _write_targets(self.folder, job, targets)

    # -- lifecycle ------------------------------------------------------------------------

    def log(self) -> str:
        return (self.folder / "prometheus.log").read_text(errors="replace")[-4000:]

    def _poll(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not done():
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {DEADLINE_SECONDS:.0f} s: {what}")
            time.sleep(POLL_SECONDS)  # polling a condition, with a deadline

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def binary() -> str:
    """The prometheus binary; the test skips, saying how to install it, when it is missing."""
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "prometheus is not installed (apt-get install -y --no-install-recommends prometheus)"
        )
    return found


def start(
    folder: Path,
    targets: Sequence[Target],
    rule_files: Sequence[Path] = (),
    *,
    jobs: Sequence[str] = (),
) -> Prometheus:
    """Start Prometheus scraping ``targets`` every second and evaluating ``rule_files``
    every second; ``jobs`` names more (empty) jobs that ``set_targets`` fills later."""
    prometheus = binary()
    folder.mkdir(parents=True, exist_ok=True)
    by_job: dict[str, list[Target]] = {job: [] for job in jobs}
    for target in targets:
        by_job.setdefault(target.job, []).append(target)
    scrape_configs = []
    for job, members in by_job.items():
        _write_targets(folder, job, members)
        honor = any(t.honor_labels for t in members)
        paths = {t.metrics_path for t in members} or {"/metrics"}
        assert len(paths) == 1, f"job {job}: one metrics path per job, not {paths}"
        scrape_configs.append(
            {
                "job_name": job,
                "honor_labels": honor,
                "metrics_path": paths.pop(),
                "file_sd_configs": [{"files": [str(folder / f"{job}.json")]}],
            }
        )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": scrape_configs,
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(folder / "prometheus.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            # Port 0: the kernel picks a free one, read back from /proc (no race with
            # other tests or other people's Prometheus on 9090).
            "--web.listen-address=127.0.0.1:0",
            "--log.level=warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    server = Prometheus(process, "", folder)
    try:
        port = _listening_port(process, server)
        server.url = f"http://127.0.0.1:{port}"
        server._poll(lambda: _ready(server.url), "prometheus ready")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """``prometheus(targets, rule_files=(), jobs=())`` starts a Prometheus (see ``start``);
    each one is stopped at teardown."""
    started: list[Prometheus] = []

    def make(
        targets: Sequence[Target], rule_files: Sequence[Path] = (), jobs: Sequence[str] = ()
    ) -> Prometheus:
        server = start(tmp_path / f"prometheus-{len(started)}", targets, rule_files, jobs=jobs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _write_targets(folder: Path, job: str, targets: Sequence[Target]) -> None:
    groups = [{"targets": [t.address], "labels": dict(t.labels)} for t in targets]
    partial = folder / f".{job}.json.partial"
    partial.write_text(json.dumps(groups))
    partial.replace(folder / f"{job}.json")  # atomic: Prometheus never reads half a file


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


def _listening_port(process: subprocess.Popen[bytes], server: Prometheus) -> int:
    """The TCP port the process listens on, from its sockets in /proc (Linux)."""
    port: int | None = None

    def found() -> bool:
        nonlocal port
        port = _listening_port_now(process.pid)
        return port is not None

    server._poll(found, "prometheus listening")
    assert port is not None
    return port


def _listening_port_now(pid: int) -> int | None:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # 0A: LISTEN
            return int(local.rsplit(":", 1)[1], 16)
    return None
