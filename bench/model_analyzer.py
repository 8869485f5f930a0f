"""Triton's Model Analyzer against the worker (its ``remote`` launch mode), for issue 14.

Model Analyzer's remote mode drives any server with Triton's repository API and config
overrides, which the worker has: it loads each candidate config into a running
``polyserve-worker`` (explicit model control) and measures it with ``perf_analyzer``. Neither
tool is a dependency of the project; set them up by hand (see testing-k8s.md for running
perf_analyzer on Debian 12 through Debian 13's loader):

    python3.11 -m venv /tmp/ma-venv && /tmp/ma-venv/bin/pip install triton-model-analyzer
    python bench/model_analyzer.py --model-analyzer /tmp/ma-venv/bin/model-analyzer \\
        --perf-analyzer /path/to/perf_analyzer-wrapper

Cap perf_analyzer's memory in that wrapper (``ulimit -v 8000000`` before it execs): measuring
cnn's 600 KB inputs at concurrency 32 on a loaded machine it grew to 22 GB and the kernel's
OOM killer took it, which on a shared machine can take something else instead.

For each bundled model it runs one Model Analyzer search (``quick`` by default: its hill
climb over instance count and max batch size with the dynamic batcher on, each config
measured at one concurrency, then a concurrency sweep of its top three; ``cpu_only``, as the
models run on CPUs here; p99 latency budget = the SLO, Model Analyzer's only latency
constraint), timestamping every line it prints. perf_analyzer's numbers are not on the
tuner's scale (another client, another window), so afterwards every config it created is
re-measured with the tuner's own ramp (``polyserve_worker.tuning``: the same load generator,
0.5 s windows and p95 SLO as bench/tuning.py), its own pick included. That gives, on one
scale: its pick against the grid's best, and after how many configs and minutes it had
measured one within 5% of the grid's best.

The raw results go to ``bench/model_analyzer.json``; the ``tuning-model-analyzer`` section of
RESULTS.md is rendered from them and from the grid's numbers in ``bench/tuning.json``
(``--render-only`` re-renders it after bench/tuning.py has re-measured the grid;
``--remeasure-only --scratch DIR`` re-measures the configs of the last search, kept in DIR,
after the tuner's ramp has changed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from polyserve_worker import config as model_config
from polyserve_worker.tuning import loadgen, measuring

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import write_section  # noqa: E402
from tuning import wait_for_quiet  # noqa: E402

SLO_MS = 50.0
SHAPES = {"mlp": (1, 256), "cnn": (1, 3, 224, 224)}
RAW = ROOT / "bench" / "model_analyzer.json"
GRID = ROOT / "bench" / "tuning.json"
PLAN = measuring.RampPlan(warmup_s=0.17, window_s=0.5)  # bench/tuning.py's --window=0.5


def loads() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


#: "Found existing model config" lines in a row, without a measurement, that mean a loop.
LOOPING = 200


def analyze(
    analyzer: str, config_file: Path, out: Path
) -> tuple[float, list[tuple[float, str]], float | None]:
    """Run Model Analyzer; its wall time, every line it printed (with seconds since start),
    and when it was stopped for looping (None: it finished).

    Its quick search can cycle for ever between configs it has already measured: when a
    step leaves a passing config for one that fails the latency budget, it steps back to the
    nearest neighbour of its best, which may be a failing config it has measured, and so on
    (``QuickRunConfigGenerator._take_step_back``, marked "TODO: TMA-871: handle back-off (and
    its termination) better" in 1.58). Measuring nothing, it prints "Found existing model
    config" without end; past ``LOOPING`` of those in a row it is stopped here, and what it
    had measured is read from its checkpoint."""
    lines: list[tuple[float, str]] = []
    began = time.monotonic()
    stopped: float | None = None
    revisits = 0
    with (out / "ma.log").open("w") as log:
        process = subprocess.Popen(
            [analyzer, "profile", "-f", str(config_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=out,
        )
        assert process.stdout is not None
        for line in process.stdout:
            at = time.monotonic() - began
            if "Found existing model config" in line:
                revisits += 1
            elif PROFILING.search(line) or CREATED.search(line):
                revisits = 0
            if revisits > LOOPING:
                if stopped is None:
                    stopped = at
                    process.terminate()
                continue
            lines.append((at, line.rstrip("\n")))
            log.write(f"[{at:7.1f}s] {line}")
        process.wait(timeout=3600)
    wall = stopped if stopped is not None else time.monotonic() - began
    return wall, lines, stopped


def measurements(checkpoint: Path, model: str) -> dict[str, list[dict[str, Any]]]:
    """Every perf_analyzer measurement in Model Analyzer's checkpoint, by config name:
    concurrency, throughput and p99 (its constraint)."""
    saved = json.loads(checkpoint.read_text())["ResultManager.results"]["_results"]
    found: dict[str, list[dict[str, Any]]] = {}
    for name, (_run_config, runs) in saved.get(model, {}).items():
        for run in runs.values():
            one = run["_model_config_measurements"][0]
            data = {key: value["_value"] for key, value in one["_non_gpu_data"]}
            found.setdefault(name, []).append(
                {
                    "concurrency": one["_model_specific_pa_params"]["concurrency-range"],
                    "throughput": data["perf_throughput"],
                    "p99Ms": data["perf_latency_p99"],
                    "meets": data["perf_latency_p99"] <= SLO_MS,
                }
            )
    return found


CREATED = re.compile(r"Creating model config: (\S+)")
PROFILING = re.compile(r"Profiling (\S+): concurrency=(\d+)")


def configs_in_order(lines: list[tuple[float, str]]) -> list[dict[str, Any]]:
    """The configs Model Analyzer created, in order: when each was created and when its
    first measurement ended (the checkpoint it saves after its first ``Profiling``)."""
    found: dict[str, dict[str, Any]] = {}
    pending: str | None = None
    for at, line in lines:
        if pending is not None and "checkpoint" in line:
            found[pending]["measuredS"] = at
            pending = None
        if m := CREATED.search(line):
            found.setdefault(m.group(1), {"name": m.group(1), "createdS": at, "runs": 0})
        elif m := PROFILING.search(line):
            entry = found.setdefault(m.group(1), {"name": m.group(1), "createdS": at, "runs": 0})
            entry["runs"] += 1
            if "measuredS" not in entry:
                pending = m.group(1)
    return list(found.values())


def remeasure(worker: measuring.Worker, model: str, config: Any) -> dict[str, Any]:
    """Load ``config`` and walk the tuner's ramp; the capacity and the point it was at."""
    config.name = model
    worker.load(model, config)
    spec = loadgen.LoadSpec(
        url=worker.grpc,
        mode="grpc",
        model=model,
        input_name="INPUT0",
        output_name="OUTPUT0",
        shape=SHAPES[model],
        concurrency=1,
        warmup_s=0,
        duration_s=0,
        watch_pid=worker.pid,
    )
    curve = measuring.ramp(spec, SLO_MS, PLAN, time.monotonic() + 120, lambda _s, _c: True)
    best = curve.best(SLO_MS)
    return {
        "capacity": curve.capacity(SLO_MS),
        "concurrency": best.concurrency if best is not None else None,
        "p95Ms": round(best.p95_ms, 2) if best is not None else None,
    }


def remeasure_all(repo: Path, model: str, scratch: Path, configs: list[dict[str, Any]]) -> str:
    """Re-measure every config Model Analyzer wrote (under ``scratch``) with the tuner's ramp,
    on a fresh worker; the load when it began."""
    worker = measuring.Worker(repo, scratch / f"{model}-remeasure-worker.log")
    worker.start()
    began = loads()
    try:
        for entry in configs:
            path = scratch / f"{model}-ma" / "configs" / entry["name"]
            if path.is_dir():
                entry["tuner"] = remeasure(worker, model, model_config.read(path))
                print(model, entry["name"], entry["tuner"], flush=True)
    finally:
        worker.stop()
    return began


def search(
    analyzer: str, perf: str, repo: Path, model: str, scratch: Path, mode: str
) -> dict[str, Any]:
    """One Model Analyzer search against a fresh worker, then every config it made re-measured
    with the tuner's ramp on another fresh worker."""
    out = scratch / f"{model}-ma"
    (out / "export").mkdir(parents=True, exist_ok=True)
    worker = measuring.Worker(repo, scratch / f"{model}-ma-worker.log")
    worker.start()
    settings = {
        "model_repository": str(repo),
        "profile_models": {model: {"cpu_only": True}},
        "triton_launch_mode": "remote",
        "triton_http_endpoint": worker.http,
        "triton_grpc_endpoint": worker.grpc,
        "triton_metrics_url": f"http://{worker.metrics}/metrics",
        "client_protocol": "grpc",
        "perf_analyzer_path": perf,
        "output_model_repository_path": str(out / "configs"),
        "override_output_model_repository": True,
        "export_path": str(out / "export"),
        "checkpoint_directory": str(out / "checkpoints"),
        "run_config_search_mode": mode,
        "run_config_search_max_instance_count": 2,
        "run_config_search_max_concurrency": 64,
        "run_config_search_max_model_batch_size": 64,
        "latency_budget": SLO_MS,
    }
    config_file = out / "ma.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    load_before = loads()
    try:
        wall, lines, stopped = analyze(analyzer, config_file, out)
    finally:
        worker.stop()
    load_after = loads()
    measured = measurements(out / "checkpoints" / "0.ckpt", model)
    configs = configs_in_order(lines)
    pick: dict[str, Any] | None = None
    for entry in configs:
        runs = measured.get(entry["name"], [])
        meeting = [r for r in runs if r["meets"]]
        top = max(meeting or runs, key=lambda r: r["throughput"], default=None)
        entry["perfAnalyzer"] = top
        better = pick is None or (
            top is not None and top["throughput"] > pick["perfAnalyzer"]["throughput"]
        )
        if top is not None and top["meets"] and better:
            pick = entry
        path = out / "configs" / entry["name"]
        if path.is_dir():
            config = model_config.read(path)
            entry["instances"] = sum(max(1, g.count) for g in config.instance_group)
            entry["maxBatchSize"] = config.max_batch_size
    remeasure_load = remeasure_all(repo, model, scratch, configs)
    return {
        "model": model,
        "mode": mode,
        "date": time.strftime("%Y-%m-%d"),
        "seconds": round(wall, 1),
        "perfAnalyzerRuns": sum(len(runs) for runs in measured.values()),
        "loadFailures": sum("load failed" in line.lower() for _, line in lines),
        "stoppedLoopingS": stopped,
        "errors": [line.split("] ", 1)[-1] for _, line in lines if "ERROR" in line],
        "configs": configs,
        "pick": pick["name"] if pick is not None else None,
        "loads": {"before": load_before, "after": load_after, "remeasure": remeasure_load},
    }


def grid_reference() -> dict[str, dict[str, Any]]:
    """The grid's numbers per model from bench/tuning.json (written by bench/tuning.py)."""
    if not GRID.exists():
        return {}
    found: dict[str, dict[str, Any]] = json.loads(GRID.read_text())["models"]
    return found


def reached(result: dict[str, Any], reference: float) -> str:
    """After which config (in its order) and when one within 5% of ``reference`` was found."""
    for i, c in enumerate(result["configs"]):
        if "tuner" in c and c["tuner"]["capacity"] >= 0.95 * reference:
            return f"config {i + 1}, {c.get('measuredS', result['seconds']) / 60:.1f} min"
    return "not reached"


def render(results: list[dict[str, Any]], quiet: str) -> list[str]:
    grid = grid_reference()
    mode = results[0]["mode"] if results else "quick"
    lines = [
        "## Self-tuning (issue 14): Triton's Model Analyzer against the worker",
        "",
        f"`bench/model_analyzer.py --mode {mode}`, {results[0]['date'] if results else ''}; "
        f"machine: {quiet}; the 1/5/15-min load before and after each search is in the table "
        "(the search's own processes, Model Analyzer, perf_analyzer and the worker, count in "
        "the load after). "
        f"Model Analyzer 1.58, {mode} search, remote launch mode against a polyserve-worker "
        "(explicit model control, each config loaded through the repository API with a config "
        "override, gRPC on the worker's default front, grpc.aio), `cpu_only`, instance count "
        "<= 2, max batch size <= 64, concurrency <= 64, p99 latency budget "
        f"{SLO_MS:g} ms (its only latency constraint), perf_analyzer 2.60 through Debian 13's "
        "loader. Every config it created was then re-measured with the tuner's ramp (same "
        "load generator, 0.5 s windows, p95 <= 50 ms, a fresh worker), so its numbers and "
        "bench/tuning.py's are on one scale. A config counts as found when its first "
        "perf_analyzer measurement ended. The grid's best is the re-measured winner of "
        "bench/tuning.py's exhaustive grid (the tuning section above).",
        "",
        "| model | configs (perf_analyzer runs) | wall time | its pick (perf_analyzer) "
        "| its pick, tuner's ramp | best of its configs, tuner's ramp | grid's best "
        "| within 5% of the grid's best after | load before; after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        configs = r["configs"]
        measured = [c for c in configs if "tuner" in c]
        top = max(measured, key=lambda c: c["tuner"]["capacity"])
        reference = grid.get(r["model"], {}).get("reference")

        def share(value: float, reference: float | None = reference) -> str:
            return f" ({100 * value / reference:.0f}%)" if reference else ""

        pick = next((c for c in configs if c["name"] == r["pick"]), None)
        if pick is not None:
            pa = pick["perfAnalyzer"]
            said = (
                f"{short(r, pick)}: {pa['throughput']:.0f} infer/s at c={pa['concurrency']}, "
                f"p99 {pa['p99Ms']:.1f} ms"
            )
            again = f"{pick['tuner']['capacity']:.0f} infer/s{share(pick['tuner']['capacity'])}"
        else:
            said, again = "none met its budget", "-"
        wall = f"{r['seconds'] / 60:.1f} min"
        if r.get("stoppedLoopingS") is not None:
            wall += " (stopped: looping)"
        if r.get("errors"):
            wall += f", {len(r['errors'])} perf_analyzer error(s)"
        lines.append(
            f"| {r['model']} | {len(configs)} ({r['perfAnalyzerRuns']}) | {wall} | {said} | "
            f"{again} | {short(r, top)}: {top['tuner']['capacity']:.0f} infer/s"
            f"{share(top['tuner']['capacity'])} | "
            + (f"{reference:.0f} infer/s" if reference else "-")
            + f" | {reached(r, reference) if reference else '-'} | "
            f"{r['loads']['before']}; {r['loads']['after']} |"
        )
    lines.append("")
    for r in results:
        again = r.get("remeasured", {})
        lines.append(
            f"{r['model']}: re-measured with the tuner's ramp "
            + (f"on {again['date']}, " if again else "right after, ")
            + f"1/5/15-min load {r['loads']['remeasure']} when it began."
        )
    lines += [
        "",
        "Every config it created, in its order: instances x max batch size (dynamic batcher "
        "on, default settings, except the model's own first), perf_analyzer's best infer/s "
        "(p99 ms) / the tuner's ramp infer/s:",
        "",
    ]
    for r in results:
        parts = []
        for c in r["configs"]:
            pa, tuner = c.get("perfAnalyzer"), c.get("tuner")
            parts.append(
                f"{short(r, c)} "
                + (f"{pa['throughput']:.0f} ({pa['p99Ms']:.0f})" if pa else "-")
                + " / "
                + (f"{tuner['capacity']:.0f}" if tuner else "-")
            )
        lines.append(f"- {r['model']}: " + "; ".join(parts))
        for error in r.get("errors", []):
            lines.append(f"  - {r['model']}: Model Analyzer said `{error}`")
    return lines


def short(result: dict[str, Any], config: dict[str, Any]) -> str:
    name = config["name"].removeprefix(result["model"] + "_config_")
    return f"{name} ({config.get('instances', '?')}x{config.get('maxBatchSize', '?')})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-analyzer", help="the model-analyzer command")
    parser.add_argument("--perf-analyzer", help="a runnable perf_analyzer")
    parser.add_argument("--mode", default="quick", choices=("quick", "brute", "optuna"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for quiet")
    parser.add_argument("--models", default=",".join(SHAPES), help="comma-separated models")
    parser.add_argument("--scratch", type=Path, help="keep the work here (default: a temp dir)")
    parser.add_argument(
        "--render-only", action="store_true", help="re-render the section from the JSON"
    )
    parser.add_argument(
        "--remeasure-only",
        action="store_true",
        help="re-measure the configs of the searches in the JSON (their --scratch kept)",
    )
    args = parser.parse_args(argv)
    raw: dict[str, Any] = json.loads(RAW.read_text()) if RAW.exists() else {"models": {}}
    if args.remeasure_only:
        if args.scratch is None:
            parser.error("--remeasure-only needs the --scratch of the searches")
        for model, result in raw["models"].items():
            quiet = wait_for_quiet(args.max_wait, threshold=1.0, hold_s=30)
            load = remeasure_all(args.scratch / "models", model, args.scratch, result["configs"])
            result["loads"]["remeasure"] = load
            result["remeasured"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": quiet}
            RAW.write_text(json.dumps(raw, indent=1) + "\n")
    elif not args.render_only:
        if not args.model_analyzer or not args.perf_analyzer:
            parser.error("--model-analyzer and --perf-analyzer are needed to run a search")
        with tempfile.TemporaryDirectory(prefix="polyserve-ma-") as tmp:
            scratch = args.scratch or Path(tmp)
            scratch.mkdir(parents=True, exist_ok=True)
            repo = scratch / "models"
            subprocess.run(
                [sys.executable, str(ROOT / "examples" / "build_models.py"), str(repo)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            for model in args.models.split(","):
                quiet = wait_for_quiet(args.max_wait, threshold=1.0, hold_s=30)
                print(model, "machine:", quiet, flush=True)
                result = search(
                    args.model_analyzer, args.perf_analyzer, repo, model, scratch, args.mode
                )
                result["quiet"] = quiet
                raw["models"][model] = result
                RAW.write_text(json.dumps(raw, indent=1) + "\n")
    results = [raw["models"][m] for m in SHAPES if m in raw["models"]]
    quiet = "; ".join(f"{r['model']}: {r['quiet']}" for r in results)
    write_section(args.out, "tuning-model-analyzer", render(results, quiet))
    print(f"wrote the tuning-model-analyzer section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
