"""``polyserve-operator``: parse settings once, connect, run kopf on our own registry.

Watches every namespace (``--all-namespaces``), or only ``settings.namespaces`` when a
namespace-scoped install names them (its Roles cover nothing else). Standalone: one replica
with a Recreate strategy, because kopf's peering pauses equal-priority replicas instead of
electing a leader; every handler is idempotent all the same. Serves kopf's liveness
endpoint, its own metrics and, with the webhook, ``/readyz`` (``readiness``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import kopf

from polyserve_operator import handlers, k8s, readiness, settings, telemetry

logger = logging.getLogger(__name__)


def scope(cfg: settings.Settings) -> dict[str, Any]:
    """kopf's scope arguments: cluster-wide, or the namespaces the settings name."""
    if cfg.namespaces:
        return {"clusterwide": False, "namespaces": list(cfg.namespaces)}
    return {"clusterwide": True, "namespaces": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyserve-operator", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint for the pod's probe",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cfg = settings.Settings()
    client = k8s.connect(cfg.kubeconfig, cfg.field_manager)
    registry = handlers.build(cfg, client)
    metrics = telemetry.current.serve(cfg.metrics_addr, cfg.metrics_port)
    logger.info("metrics on %s:%d/metrics", cfg.metrics_addr, metrics.port)
    # With the webhook, the pod is Ready only while it answers (readiness), so its Service
    # never sends the API server to an operator that cannot; without it, nothing follows
    # readiness and nothing is served.
    ready = None
    if cfg.webhook.enabled:
        check = readiness.Readiness(cfg.webhook)
        ready = readiness.serve(cfg.readiness_addr, cfg.readiness_port, check)
        logger.info("readiness on %s:%d%s", cfg.readiness_addr, ready.port, readiness.PATH)
    try:
        asyncio.run(
            kopf.operator(
                registry=registry,
                standalone=True,
                **scope(cfg),
                liveness_endpoint=args.liveness,
            )
        )
    finally:
        if ready is not None:
            ready.close()
        metrics.close()
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
