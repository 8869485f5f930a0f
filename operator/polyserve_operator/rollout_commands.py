"""``polyserve rollout status|promote|abort|retry NAME``: a canary rollout for people.

``status`` reads ``status.rollout`` and prints the step, the weights and each measurement
(``--watch`` follows it until the rollout ends). The actions write one annotation,
``polyserve.io/rollout-action: <verb>/<unique>``, which the operator carries out once and
records in ``status.rollout.lastAction``; the spec is never touched, so a GitOps tool
(Argo CD, Flux) sees no drift. The same as a plain command:
``kubectl annotate im NAME polyserve.io/rollout-action=promote/$(date +%s) --overwrite``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from polyserve_operator import api, k8s

ANNOTATION = "polyserve.io/rollout-action"
#: Where `--watch` stops: the rollout ended, or it waits for a person.
FINAL = ("Healthy", "RolledBack", "Paused")


def describe(body: dict[str, Any]) -> str:
    """The rollout of one resource, for people."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    rollout = (body.get("status") or {}).get("rollout") or {}
    canary = (spec.get("rollout") or {}).get("canary") or {}
    steps = canary.get("steps") or []
    lines = [f"{body.get('kind', 'InferenceModel')} {meta.get('namespace')}/{meta.get('name')}"]
    if not rollout:
        strategy = (spec.get("rollout") or {}).get("strategy", "RollingUpdate")
        return lines[0] + f": no canary rollout (strategy {strategy})"
    phase = rollout.get("phase", "?")
    lines.append(f"  phase:    {phase}")
    lines.append(f"  stable:   {rollout.get('stableRevision')}")
    if rollout.get("canaryRevision"):
        lines.append(f"  canary:   {rollout.get('canaryRevision')}")
    if rollout.get("stepIndex") is not None and phase in ("Progressing", "Paused"):
        index = int(rollout["stepIndex"])
        step = steps[index] if index < len(steps) else {}
        lines.append(f"  step:     {index + 1}/{len(steps)} {_step(step)}")
    if rollout.get("weight") is not None:
        actual = rollout.get("actualWeight")
        lines.append(
            f"  weight:   {rollout['weight']}% to the canary"
            + (f" (really {actual}%)" if actual is not None and actual != rollout["weight"] else "")
        )
    if rollout.get("message"):
        lines.append(f"  message:  {rollout['message']}")
    for m in rollout.get("measurements") or []:
        values = ", ".join(f"{k}={v}" for k, v in (m.get("values") or {}).items())
        lines.append(f"  measured: {m.get('time')} {m.get('verdict')}: {values}")
    return "\n".join(lines)


def _step(step: dict[str, Any]) -> str:
    if "setWeight" in step:
        return f"setWeight {step['setWeight']}"
    if "pause" in step:
        duration = (step.get("pause") or {}).get("duration")
        return f"pause {duration}" if duration else "pause (until promoted)"
    return "analysis"


def act(client: k8s.Client, kind: str, namespace: str, name: str, verb: str) -> str:
    """Ask the operator for ``verb`` (promote, abort, retry) on one resource."""
    unique = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    value = f"{verb}/{unique}"
    client.patch(
        api.API_VERSION,
        kind,
        namespace,
        name,
        {"metadata": {"annotations": {ANNOTATION: value}}},
    )
    return value


def add_commands(commands: Any) -> None:
    rollout = commands.add_parser("rollout", help="follow and steer a canary rollout")
    verbs = rollout.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", help="the InferenceModel")
    common.add_argument("-n", "--namespace", default="default")
    common.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
    status = verbs.add_parser("status", parents=[common], help="where the rollout stands")
    status.add_argument(
        "-w", "--watch", action="store_true", help="follow it until it ends or waits for you"
    )
    verbs.add_parser("promote", parents=[common], help="skip the current step (ends a pause)")
    verbs.add_parser("abort", parents=[common], help="roll back to the stable revision")
    verbs.add_parser("retry", parents=[common], help="try a rolled-back revision again")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    kind = "InferenceModel"
    try:
        client = k8s.connect(args.kubeconfig, "polyserve-cli")
    except Exception as exc:  # the kubernetes client's config errors have no common root
        print(f"polyserve rollout: no cluster to talk to: {exc}", file=sys.stderr)
        return 1
    try:
        body = client.get(api.API_VERSION, kind, args.namespace, args.name)
        if body is None:
            print(
                f"polyserve rollout: {kind} {args.namespace}/{args.name} not found", file=sys.stderr
            )
            return 1
        if args.verb != "status":
            value = act(client, kind, args.namespace, args.name, args.verb)
            print(f"{args.verb} requested ({ANNOTATION}={value})", file=out)
            return 0
        last = ""
        while True:
            text = describe(body)
            if text != last:
                print(text, file=out, flush=True)
                last = text
            phase = ((body.get("status") or {}).get("rollout") or {}).get("phase")
            if not args.watch or phase in FINAL or phase is None:
                return 0
            time.sleep(2)
            body = client.get(api.API_VERSION, kind, args.namespace, args.name) or body
    except k8s.ApiError as exc:
        print(f"polyserve rollout: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
