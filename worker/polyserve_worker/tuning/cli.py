"""``polyserve tune`` (also ``polyserve-worker tune``): the command line of the tuner.

    polyserve tune --model-repository DIR --model NAME --slo-p95-ms 50 --budget 10m \\
        --output DIR [--protocol grpc|http|http-json] [--hardware pool=xeon,backend=auto]

It reads the model's config (from its directory, or ``--config-pbtxt``), starts a worker on
the repository, loads the config once so the worker completes it (inputs, outputs, backend),
builds the space of that completed config for this hardware, searches it within the budget,
and writes the outputs (``reporting``). ``--result-file`` also writes the summary there: a
tuning Job points it at its termination message, which is how the operator reads the result.
``flags.args`` renders this command line for the operator's Job, so the flags have one
owner.
Exit status: 0 with a winner, 1 when no config met the SLO, 2 when nothing could be tuned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from polyserve_worker import backends, errors
from polyserve_worker import config as model_config
from polyserve_worker.tuning import (
    flags,
    hardware,
    loadgen,
    measuring,
    progress,
    reporting,
    searching,
    space,
)


class TuneError(Exception):
    """Nothing could be tuned; the message says why and what to change."""


def _plan(budget_s: float, window: float | None) -> measuring.RampPlan:
    """Shorter windows for short budgets: more trials, noisier points."""
    if window is not None:
        return measuring.RampPlan(warmup_s=min(0.5, window / 3), window_s=window)
    if budget_s <= 60:
        return measuring.RampPlan(warmup_s=0.2, window_s=0.8)
    if budget_s <= 300:
        return measuring.RampPlan(warmup_s=0.3, window_s=1.2)
    return measuring.RampPlan(warmup_s=0.5, window_s=2.0)


def _format(model_dir: Path, config: Any) -> str:
    versions = sorted(
        (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )
    for version in reversed(versions):
        found = space.model_format(sorted(p.name for p in version.iterdir()))
        if found is not None:
            return found
    info = backends.REGISTRY.get(config.backend)
    if info is not None:
        return info.formats[0]
    raise TuneError(f"{model_dir}: no model file the worker knows in a version folder")


def tune(a: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    began = time.monotonic()
    if a.budget < flags.MIN_BUDGET_S:
        raise TuneError(f"--budget {a.budget:g}s: at least {flags.MIN_BUDGET_S:g}s")
    model_dir = a.model_repository / a.model
    if not model_dir.is_dir():
        raise TuneError(f"no model folder {model_dir}")
    try:
        given = (
            model_config.parse_pbtxt(a.config_pbtxt, "--config-pbtxt")
            if a.config_pbtxt is not None
            else model_config.read(model_dir)
        )
    except errors.PolyserveError as exc:
        raise TuneError(str(exc)) from exc
    given.name = a.model
    if given.platform == "ensemble":
        space.of(given, "", space.Hardware(), a.slo_p95_ms)  # raises NotTunable
    machine = hardware.this_machine()
    profile = hardware.profile(a.hardware, machine)
    model_format = _format(model_dir, given)
    reserve = min(5.0, 0.1 * a.budget)
    deadline = began + a.budget - reserve
    a.output.mkdir(parents=True, exist_ok=True)
    worker = measuring.Worker(a.model_repository, a.output / "worker.log")
    watch = progress.Progress(err, a.model, a.budget, a.slo_p95_ms)
    try:
        worker.start(timeout=max(10.0, deadline - time.monotonic()))
        worker.load(a.model, given if a.config_pbtxt is not None else None)
        completed = model_config.parse_json(json.dumps(worker.config(a.model)))
        the_space = space.of(completed, model_format, profile, a.slo_p95_ms)
        metadata = worker.metadata(a.model)
        inputs = measuring.request_inputs(metadata, completed.max_batch_size > 0)
        outputs = [o["name"] for o in metadata.get("outputs") or []]
        mode = flags.PROTOCOLS[a.protocol]
        load = loadgen.LoadSpec(
            url=worker.grpc if mode == "grpc" else worker.http,
            mode=mode,
            model=a.model,
            input_name=inputs[0].name,
            output_name=outputs[0],
            shape=inputs[0].shape,
            concurrency=1,
            warmup_s=0.0,
            duration_s=0.0,
            inputs=inputs,
        )
        plan = searching.Plan(
            slo_ms=a.slo_p95_ms,
            deadline=deadline,
            ramp=_plan(a.budget, a.window),
            tolerance=a.tolerance,
            seed=a.seed,
            max_trials=a.max_trials,
            candidates=tuple(the_space.grid()) if a.grid else None,
            prune_ratio=0.0 if a.grid else 0.5,  # a grid measures every candidate whole
        )
        search = searching.Search(a.model, the_space, worker, load, plan, watch)
        try:
            trials = search.run()
        except KeyboardInterrupt:  # stopped by hand: report the best so far
            trials = search.trials
    finally:
        watch.close()
        worker.stop()
    outcome = reporting.Outcome(
        model=a.model,
        slo_ms=a.slo_p95_ms,
        protocol=a.protocol,
        budget_s=a.budget,
        elapsed_s=time.monotonic() - began,
        machine=machine,
        space=the_space,
        trials=trials,
        winner=search.winner(),
        reference_rate=search.reference_rate(),
    )
    written = reporting.write(outcome, a.output)
    if a.result_file is not None:
        a.result_file.write_text(json.dumps(reporting.summary(outcome), separators=(",", ":")))
    out.write(reporting.text(outcome).split("\n\n")[0] + "\n")
    out.write("wrote " + ", ".join(str(p) for p in written) + "\n")
    return 0 if outcome.winner is not None else 1


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    # sys.stdout and sys.stderr as they are now (a default argument would keep the streams
    # of the moment this module was imported).
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    a = flags.parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return tune(a, out, err)
    except (
        TuneError,
        space.NotTunable,
        hardware.HardwareError,
        measuring.MeasureError,
    ) as exc:
        # The last line of the log: a failed tuning Job's termination message.
        print(f"polyserve tune: {exc}", file=err, flush=True)
        return 2
