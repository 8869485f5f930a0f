"""One fleet: the API server, nodes, scheduler, controllers (Deployments, ReplicaSets, Jobs),
Services, Gateways, kubelets and the operator.

Everything but the operator and the pods runs in this process on one event loop; the
operator is the real ``polyserve-operator`` process, talking to the API server through the
kubeconfig the fleet writes, exactly as it would to a cluster. ``Fleet.start`` returns once
the API answers and the nodes are registered; ``Fleet.stop`` stops the operator, terminates
every pod (their grace periods honoured, up to a cap so ``down`` stays quick) and closes the
servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from polyserve_sandbox import config as sandbox_config
from polyserve_sandbox import defaults, deployments, hollow, jobs, nodes, scheduling, services
from polyserve_sandbox.apiserver import crds as apicrds
from polyserve_sandbox.apiserver import http as apihttp
from polyserve_sandbox.apiserver import store as apistore
from polyserve_sandbox.gateways import controller as gateway_controller
from polyserve_sandbox.kubelet import backoff as kubelet_backoff
from polyserve_sandbox.kubelet import images as kubelet_images
from polyserve_sandbox.kubelet import node as kubelet_node

logger = logging.getLogger(__name__)

#: Longest a pod may take to stop when the whole fleet goes down.
STOP_GRACE_CAP_SECONDS = 15.0
#: A fault plan (JSON or YAML) that replaces sandbox.yaml's ``faults:``.
FAULTS_ENV = "POLYSERVE_SANDBOX_FAULTS"


@dataclass(frozen=True)
class Layout:
    """Where a fleet keeps its files."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def config(self) -> Path:
        return self.root / "sandbox.yaml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pods(self) -> Path:
        return self.root / "pods"


def _ranges(network: str) -> tuple[str, str, str]:
    """Pod addresses from the low half of the fleet's network, Service IPs from the third
    quarter, Gateway addresses from the top quarter: three blocks that never meet, so a
    Gateway's listener may take any port (80, 8000) on an address no Service or pod has."""
    pods, high = ipaddress.ip_network(network).subnets(prefixlen_diff=1)
    service_ips, gateway_ips = high.subnets(prefixlen_diff=1)
    return str(pods), str(service_ips), str(gateway_ips)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Fleet:
    """A running local fleet (see the module docstring)."""

    def __init__(
        self, layout: Layout, cfg: sandbox_config.SandboxConfig, *, operator: bool = True
    ) -> None:
        self.layout = layout
        self.cfg = cfg
        self.network = cfg.network or sandbox_config.choose_network()
        pod_range, service_range, gateway_range = _ranges(self.network)
        self.store = apistore.Store()
        defaults.register(self.store)
        apicrds.register_project_crds(self.store)
        self.services = services.Services(self.store, service_range)
        self.store.add_admission("v1", "Service", self.services.admit)
        self.gateways = gateway_controller.Gateways(self.store, self.services, gateway_range)
        self.scheduler = scheduling.Scheduler(
            self.store, claim_exists=lambda ns, claim: cfg.claim(ns, claim) is not None
        )
        self.controllers = deployments.Controllers(self.store)
        self.jobs = jobs.JobController(self.store)
        self.pod_addresses = services.Addresses(pod_range)
        self.api = apihttp.ApiServer(
            self.store,
            host="127.0.0.1",
            port=cfg.api_port,
            faults=cfg.faults,
            audit_log=layout.logs / "audit.log" if cfg.audit else None,
        )
        self.kubelets: list[kubelet_node.Kubelet | hollow.HollowKubelet] = []
        self.run_operator = operator and cfg.operator.enabled
        self.operator: subprocess.Popen[bytes] | None = None
        self.url = ""

    def _images(self) -> kubelet_images.ImageMap:
        found = kubelet_images.default_images()
        for image in reversed(self.cfg.images):
            found = found.with_image(
                image.pattern,
                kubelet_images.Image(
                    path=tuple(image.path),
                    entrypoint=tuple(image.entrypoint),
                    cmd=tuple(image.cmd),
                    env=dict(image.env),
                ),
            )
        return found

    def _node_specs(self) -> list[nodes.NodeSpec]:
        specs = []
        if self.cfg.machine_node:
            specs.append(nodes.xeon_node())
            gpu = nodes.gpu_node(nodes.gpus())
            if gpu is not None:
                specs.append(gpu)
        specs += [
            nodes.NodeSpec(n.name, dict(n.labels), list(n.taints), dict(n.allocatable))
            for n in self.cfg.nodes
        ]
        return specs

    async def start(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.logs.mkdir(exist_ok=True)
        self.layout.pods.mkdir(exist_ok=True)
        backoff = kubelet_backoff.Backoff(
            initial=self.cfg.backoff.initial_seconds, cap=self.cfg.backoff.max_seconds
        )
        images = self._images()
        for spec in self._node_specs():
            self.store.create(nodes.node_object(spec))
            if self.cfg.pods == "hollow":
                self.kubelets.append(
                    hollow.HollowKubelet(self.store, spec.name, ip_allocator=self.pod_addresses)
                )
                continue
            kubelet = kubelet_node.Kubelet(
                self.store,
                spec.name,
                self.layout.pods,
                images=images,
                claims=self.cfg.claim,
                backoff=backoff,
                ip_allocator=self.pod_addresses,
            )
            self.kubelets.append(kubelet)
        self.scheduler.start()
        self.controllers.start()
        self.jobs.start()
        self.services.start()
        self.gateways.start()
        for running in self.kubelets:
            await running.start()
        self.url = await self.api.start()
        apihttp.write_kubeconfig(self.url, self.layout.kubeconfig)
        self._write_state(ready=False)
        if self.run_operator:
            self._start_operator()
        self._write_state(ready=True)
        logger.info("sandbox up: API %s, network %s", self.url, self.network)

    def _write_state(self, *, ready: bool) -> None:
        state = {
            "pid": os.getpid(),
            "api": self.url,
            "network": self.network,
            "kubeconfig": str(self.layout.kubeconfig.resolve()),
            "operator": self.operator.pid if self.operator else None,
            "ready": ready,
        }
        partial = self.layout.state.with_suffix(".partial")
        partial.write_text(json.dumps(state, indent=2))
        partial.replace(self.layout.state)

    def _start_operator(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("POLYSERVE_OPERATOR_")},
            "POLYSERVE_OPERATOR_KUBECONFIG": str(self.layout.kubeconfig.resolve()),
            # Its own metrics on a free local port: many fleets (and a Prometheus) share
            # this machine, and 9090 is anyone's.
            "POLYSERVE_OPERATOR_METRICS_ADDR": "127.0.0.1",
            "POLYSERVE_OPERATOR_METRICS_PORT": "0",
            **self.cfg.operator.env,
        }
        log = open(self.layout.logs / "operator.log", "ab")  # noqa: SIM115 - the child owns it
        self.operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "polyserve_operator.main",
                "--liveness",
                f"http://127.0.0.1:{_free_port()}/healthz",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    async def _stop_operator(self) -> None:
        process = self.operator
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        for _ in range(200):
            if process.poll() is not None:
                return
            await asyncio.sleep(0.05)
        process.kill()
        await asyncio.to_thread(process.wait)

    async def stop(self) -> None:
        await self._stop_operator()
        await self.scheduler.stop()
        await self.controllers.stop()
        await self.jobs.stop()
        for kubelet in self.kubelets:
            await kubelet.stop(grace_cap=STOP_GRACE_CAP_SECONDS)
        await self.gateways.stop()
        await self.services.stop()
        await self.api.stop()
        with contextlib.suppress(OSError):
            self.layout.state.unlink()
        logger.info("sandbox down")


async def serve(folder: Path, *, operator: bool, faults: str | None = None) -> None:
    """Run a fleet in this process until SIGTERM or SIGINT; ``faults`` replaces the
    config's fault plan (``POLYSERVE_SANDBOX_FAULTS``)."""
    layout = Layout(folder)
    cfg = sandbox_config.load(layout.config, faults=faults)
    fleet = Fleet(layout, cfg, operator=operator)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await fleet.start()
        await stopping.wait()
    finally:
        await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m polyserve_sandbox serve --dir DIR [--no-operator]`` (what ``up`` runs),
    or any ``polyserve sandbox`` command."""
    import argparse

    from polyserve_sandbox import cli

    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["serve"]:
        parser = argparse.ArgumentParser(prog="python -m polyserve_sandbox serve")
        parser.add_argument("serve")
        parser.add_argument("--dir", type=Path, default=cli.DEFAULT_DIR)
        parser.add_argument("--no-operator", action="store_true")
        parser.add_argument("--daemon", action="store_true", help="fork into the background")
        args = parser.parse_args(args_list)
        if args.daemon and os.fork() > 0:
            return 0  # `polyserve sandbox up` waits for the state file, not for this process
        if args.daemon:
            os.setsid()
        args.dir.mkdir(parents=True, exist_ok=True)
        (args.dir / cli.PID).write_text(str(os.getpid()))
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        # Absolute: every host path a pod is given must resolve from any working directory.
        faults = os.environ.get(FAULTS_ENV) or None
        asyncio.run(serve(args.dir.absolute(), operator=not args.no_operator, faults=faults))
        return 0
    parser = argparse.ArgumentParser(prog="python -m polyserve_sandbox")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_commands(commands)
    return cli.run(parser.parse_args(["sandbox", *args_list]))
