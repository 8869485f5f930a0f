"""``polyserve tune``: the tuner on this machine, or ``--from-status NAME`` the patch to commit.

    polyserve tune --model-repository DIR --model NAME --slo-p95-ms 50 --budget 10m --output DIR
    polyserve tune --from-status NAME [-n NAMESPACE] > tuned.yaml

The first form is the worker's tuner (``polyserve_worker.tuning``, the tune extra). The second
reads what the operator's tuning Jobs measured (``status.tuning``) and prints a JSON merge
patch for the InferenceModel, as YAML: the recommended config merged into ``spec.config`` (a
model without tiers), or each tier's measured capacity (a tiered model: ``spec.config`` is
shared by its tiers, so each tier's recommendation is printed as a comment). Commit the same
change to git, or ``kubectl patch inferencemodel NAME --type merge --patch-file tuned.yaml``:
the operator itself never writes the spec. Fields the operator fills in from the hardware
(the backend, ``parameters.precision`` and the engine cache) are left out, so the spec keeps
following ``hardware``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from polyserve_operator import api, k8s
from polyserve_worker.backends import configs as backend_configs

Obj = dict[str, Any]
#: What the operator derives from hardware: a recommendation must not pin it in spec.config.
OPERATOR_OWNED_PARAMETERS = ("precision", backend_configs.ENGINE_CACHE)


class NoResult(Exception):
    """status.tuning has nothing to recommend yet; the message says what it has."""


def _results(body: Obj) -> dict[str, Obj]:
    found = {}
    for entry in (body.get("status") or {}).get("tuning") or []:
        if entry.get("result"):
            found[str(entry.get("tier") or "")] = entry
    return found


def recommended_config(result: Obj) -> Obj:
    """The tuned fields of a result, less what the operator derives from hardware."""
    config = copy.deepcopy(result.get("config") or {})
    config.pop("backend", None)
    params = {
        k: v
        for k, v in (config.get("parameters") or {}).items()
        if k not in OPERATOR_OWNED_PARAMETERS
    }
    if params:
        config["parameters"] = params
    else:
        config.pop("parameters", None)
    return config


def patch(body: Obj) -> tuple[Obj, list[str]]:
    """(the merge patch, comment lines) for one InferenceModel from its status.tuning."""
    meta, spec = body.get("metadata") or {}, body.get("spec") or {}
    where = f"{meta.get('namespace', 'default')}/{meta.get('name')}"
    results = _results(body)
    if not results:
        phases = [
            f"{e.get('tier') or 'model'}: {e.get('phase')} {e.get('message', '')}".strip()
            for e in (body.get("status") or {}).get("tuning") or []
        ]
        raise NoResult(
            f"InferenceModel {where} has no tuning result yet"
            + (f" ({'; '.join(phases)})" if phases else " (does its spec have tuning?)")
        )
    notes = []
    for tier, entry in sorted(results.items()):
        r = entry["result"]
        stale = (
            " (for an older artifact or profile: a new run is under way)"
            if r.get("key") != entry.get("key")
            else ""
        )
        notes.append(
            f"{tier or 'the model'}: {r.get('capacity')} requests/s per replica at p95 "
            f"{r.get('p95Ms')} ms (SLO {r.get('sloP95Ms')} ms; the spec's config: "
            f"{r.get('baselineCapacity')}), measured {r.get('completedAt')} on "
            f"{r.get('nodeType') or 'an unknown node'}{stale}"
        )
    if not spec.get("tiers"):
        r = results.get("", {}).get("result") or {}
        config = copy.deepcopy(spec.get("config") or {})
        tuned = recommended_config(r)
        params = {**(config.get("parameters") or {}), **(tuned.pop("parameters", None) or {})}
        config.update(tuned)
        if params:
            config["parameters"] = params
        return {"spec": {"config": config}}, notes
    tiers = copy.deepcopy(spec["tiers"])
    for tier in tiers:
        r = (results.get(tier.get("name", "")) or {}).get("result") or {}
        if r.get("capacity"):
            tier["capacity"] = round(float(r["capacity"]), 1)
        if r.get("config"):
            notes.append(
                f"tier {tier.get('name')}'s recommended config (spec.config is shared by every "
                f"tier): {json.dumps(recommended_config(r), separators=(',', ':'))}"
            )
    return {"spec": {"tiers": tiers}}, notes


def render(body: Obj) -> str:
    """The patch as YAML, with what it is and how to apply it as comments."""
    meta = body.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    found, notes = patch(body)
    lines = [
        f"# polyserve tune --from-status {name} -n {namespace}: what the tuning Jobs measured.",
        f"# Commit it to git, or: kubectl patch inferencemodel {name} -n {namespace} "
        "--type merge --patch-file THIS_FILE",
        *(f"# {n}" for n in notes),
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(found, sort_keys=False)


def _from_status(argv: list[str], out: TextIO) -> int:
    parser = argparse.ArgumentParser(prog="polyserve tune --from-status")
    parser.add_argument("--from-status", required=True, metavar="NAME", help="the InferenceModel")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config")
    args = parser.parse_args(argv)
    try:
        client = k8s.connect(args.kubeconfig, "polyserve-cli")
    except Exception as exc:  # the kubernetes client's config errors have no common root
        print(f"polyserve tune: no cluster to talk to: {exc}", file=sys.stderr)
        return 1
    try:
        body = client.get(api.API_VERSION, "InferenceModel", args.namespace, args.from_status)
        if body is None:
            print(
                f"polyserve tune: InferenceModel {args.namespace}/{args.from_status} not found",
                file=sys.stderr,
            )
            return 1
        out.write(render(body))
        return 0
    except (k8s.ApiError, NoResult) as exc:
        print(f"polyserve tune: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()


def add_commands(commands: Any) -> None:
    """For ``polyserve --help``; ``run`` parses the arguments itself."""
    commands.add_parser(
        "tune",
        add_help=False,
        help="find a model's best config on this machine, or print the patch the operator's "
        "tuning measured (--from-status NAME)",
    )


def run(argv: list[str], out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    if any(a == "--from-status" or a.startswith("--from-status=") for a in argv):
        return _from_status(argv, out)
    try:
        from polyserve_worker.tuning import cli as tuning_cli
    except ImportError as exc:
        print(f"polyserve tune: pip install 'polyserve[tune]' ({exc})", file=sys.stderr)
        return 2
    code: int = tuning_cli.main(argv, out=out)
    return code
