"""Issue 14's measured claims: ``polyserve tune`` against the bundled config and an exhaustive grid.

For the bundled ``mlp`` and ``cnn`` on this machine, over one space (ONNX Runtime in fp32:
the batcher on or off, three max batch sizes, a preferred size or none, four queue delays,
instances x intra-op threads), it runs:

1. the exhaustive grid (``polyserve tune --grid``: every candidate of the space, in order);
2. the tuner (``polyserve tune``, Optuna, pruning) with a short budget;

and reports the capacity at the SLO of the bundled config (the first trial of each run), the
tuner's winner and the grid's best, and how many trials and minutes each took to get within
5% of the grid's best. Both searches end by re-measuring their best trials (the tuner's
``confirm`` phase) and a winner's capacity is the mean of its measurements; the grid's best
is its re-measured winner, not its highest single reading (shown beside it), which on 2
shared cores is mostly the luckiest of 75 noisy ones. Then one full-space run on ``mlp``
(every backend and precision this machine runs) whose report.txt goes next to the results
(``bench/tuning-report-mlp.txt``). The grid's numbers also go to ``bench/tuning.json``, where
bench/model_analyzer.py reads its reference.

Numbers are taken when the machine is quiet: it waits (up to ``--max-wait``, 5 minutes) for
the 1-minute load average to stay below 1.0 for 30 s, and writes the load with the numbers.
Results go to the ``tuning`` section of RESULTS.md. Not run in CI (about 20 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import write_section  # noqa: E402

SPACE = "backend=onnxruntime,precision=fp32"
MODELS = ("mlp", "cnn")


def wait_for_quiet(max_wait_s: float, threshold: float = 0.5, hold_s: float = 60) -> str:
    """Wait until the 1-minute load stays below ``threshold`` for ``hold_s``; say how it went."""
    began = time.monotonic()
    quiet_since: float | None = None
    while time.monotonic() - began < max_wait_s:
        load = os.getloadavg()[0]
        now = time.monotonic()
        if load < threshold:
            quiet_since = quiet_since if quiet_since is not None else now
            if now - quiet_since >= hold_s:
                return f"quiet (1-min load {load:.2f})"
        else:
            quiet_since = None
        time.sleep(5)
    load = os.getloadavg()[0]
    return f"not quiet after {max_wait_s / 60:.0f} min of waiting (1-min load {load:.2f})"


def tune(repo: Path, model: str, out: Path, *extra: str) -> tuple[dict[str, Any], list[Any], float]:
    loads = " ".join(f"{v:.2f}" for v in os.getloadavg())
    began = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "polyserve_worker.main",
        "tune",
        f"--model-repository={repo}",
        f"--model={model}",
        "--slo-p95-ms=50",
        f"--output={out}",
        *extra,
    ]
    print("$", " ".join(command[2:]), f"(load {loads})", flush=True)
    subprocess.run(command, check=False, timeout=4 * 3600)
    wall = time.monotonic() - began
    result = json.loads((out / "result.json").read_text())
    trials = json.loads((out / "trials.json").read_text())
    result["loadBefore"] = loads
    return result, trials, wall


def within(trials: list[Any], target: float) -> tuple[int, float] | None:
    """(trials, minutes) until the first trial whose first reading was at or above
    ``target``."""
    for t in trials:
        if t["state"] == "measured" and first(t) >= target:
            return t["trial"] + 1, (t["startedS"] + t["seconds"]) / 60
    return None


def first(trial: dict[str, Any]) -> float:
    readings = trial.get("capacities") or [trial["capacity"]]
    return float(readings[0])


def spread(trials: list[Any]) -> str:
    """The re-measured trials' readings, for the noise they show."""
    shown = []
    for t in trials:
        readings = t.get("capacities") or []
        if len(readings) > 1:
            low, high = min(readings), max(readings)
            shown.append(
                f"trial {t['trial']}: {', '.join(f'{r:.0f}' for r in readings)} "
                f"({100 * (high - low) / (sum(readings) / len(readings)):.0f}% apart)"
            )
    return "; ".join(shown) or "none re-measured"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--budget", default="2m", help="the tuner's budget per model")
    parser.add_argument("--window", default="0.5", help="seconds measured per concurrency")
    parser.add_argument("--max-wait", type=float, default=300, help="seconds to wait for quiet")
    args = parser.parse_args(argv)
    quiet = wait_for_quiet(args.max_wait, threshold=1.0, hold_s=30)
    print("machine:", quiet, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="polyserve-tuning-") as tmp:
        scratch = Path(tmp)
        repo = scratch / "models"
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "build_models.py"), str(repo)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        window = f"--window={args.window}"
        for model in MODELS:
            grid, grid_trials, grid_wall = tune(
                repo,
                model,
                scratch / f"{model}-grid",
                "--grid",
                "--budget=2h",
                window,
                f"--hardware={SPACE}",
            )
            tuned, tuned_trials, tuned_wall = tune(
                repo,
                model,
                scratch / f"{model}-tuned",
                f"--budget={args.budget}",
                window,
                f"--hardware={SPACE}",
            )
            best = grid["capacity"]  # its winner, re-measured
            rows.append(
                {
                    "model": model,
                    "bundled": tuned["baselineCapacity"],
                    "tuned": tuned["capacity"],
                    "tunedTrials": tuned["trials"],
                    "tunedMinutes": tuned_wall / 60,
                    "tunedWithin": within(tuned_trials, 0.95 * best),
                    "pruned": sum(t["state"] == "pruned" for t in tuned_trials),
                    "grid": best,
                    "gridReading": max(first(t) for t in grid_trials if t["state"] == "measured"),
                    "gridTrials": len(grid_trials),
                    "gridMinutes": grid_wall / 60,
                    "gridWithin": within(grid_trials, 0.95 * best),
                    "gridSpread": spread(grid_trials),
                    "tunedSpread": spread(tuned_trials),
                    "winner": tuned["config"],
                    "gridWinner": grid["config"],
                    "loads": (grid["loadBefore"], tuned["loadBefore"]),
                }
            )
            print(json.dumps(rows[-1], default=str), flush=True)
        full, _, full_wall = tune(repo, "mlp", scratch / "mlp-full", "--budget=3m")
        report = (scratch / "mlp-full" / "report.txt").read_text()
        (ROOT / "bench" / "tuning-report-mlp.txt").write_text(report)
    (ROOT / "bench" / "tuning.json").write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": quiet,
                "window": args.window,
                "models": {
                    r["model"]: {
                        "reference": r["grid"],
                        "highestReading": r["gridReading"],
                        "winner": r["gridWinner"],
                    }
                    for r in rows
                },
            },
            indent=1,
        )
        + "\n"
    )
    lines = [
        "## Self-tuning (issue 14): `polyserve tune` vs the bundled config vs an exhaustive grid",
        "",
        f"`bench/tuning.py`, {time.strftime('%Y-%m-%d')}; machine: {quiet}; the 1/5/15-min "
        "load before each run is in the last column. 2 CPU cores shared by the worker and the "
        "load generator (closed loop, gRPC on the worker's default front, grpc.aio, one client "
        "process). SLO: p95 <= 50 ms. Capacity = the best throughput whose p95 met the SLO on "
        f"a concurrency ramp (1, 2, 4, ... clients, {args.window} s per window); both searches "
        "end by re-measuring their 3 best trials (the last 15% of the budget; up to twice "
        "each) and a winner's capacity is the mean of its readings. The grid's best is its "
        "re-measured winner; its highest single reading is in brackets.",
        f"Space (the same for both searches): `--hardware {SPACE}`: the dynamic batcher on or "
        "off, max_batch_size (the config's, /4, /16), a preferred batch size (none or full), "
        "max_queue_delay 0/250/1000/4000 us, instances x intra-op threads on 2 CPUs.",
        "",
        "| model | bundled config | tuner's winner | grid's best (highest reading) | tuner: "
        "trials / min (pruned) | tuner within 5% of grid best after | grid: trials / min | "
        "grid within 5% after | load (grid; tuner) |",
        "|---|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:

        def at(found: tuple[int, float] | None) -> str:
            return f"trial {found[0]}, {found[1]:.1f} min" if found else "not reached"

        lines.append(
            f"| {r['model']} | {r['bundled']:.0f} infer/s | {r['tuned']:.0f} infer/s "
            f"({100 * r['tuned'] / r['grid']:.0f}% of grid) | {r['grid']:.0f} infer/s "
            f"({r['gridReading']:.0f}) | "
            f"{r['tunedTrials']} / {r['tunedMinutes']:.1f} ({r['pruned']}) | "
            f"{at(r['tunedWithin'])} | {r['gridTrials']} / {r['gridMinutes']:.1f} | "
            f"{at(r['gridWithin'])} | {r['loads'][0]}; {r['loads'][1]} |"
        )
    lines += ["", "Winners (the tuned fields):", ""]
    for r in rows:
        lines.append(f"- {r['model']}: `{json.dumps(r['winner'], separators=(',', ':'))}`")
        lines.append(
            f"- {r['model']}, the grid's: `{json.dumps(r['gridWinner'], separators=(',', ':'))}`"
        )
    lines += ["", "The re-measured trials' readings (infer/s), the noise of one ramp:", ""]
    for r in rows:
        lines.append(f"- {r['model']} grid: {r['gridSpread']}")
        lines.append(f"- {r['model']} tuner: {r['tunedSpread']}")
    lines += [
        "",
        f"A full-space run on mlp (every backend and precision this CPU runs, budget 3 min, "
        f"{full_wall / 60:.1f} min wall, load before {full['loadBefore']}): "
        f"{full['capacity']} infer/s vs {full['baselineCapacity']} for the bundled config; "
        "its report is `bench/tuning-report-mlp.txt`.",
        "",
        "Model Analyzer on the same models and scale: the next section "
        "(`bench/model_analyzer.py`).",
    ]
    write_section(args.out, "tuning", lines)
    print(f"wrote the tuning section of {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
