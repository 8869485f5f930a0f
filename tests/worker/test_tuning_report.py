"""What ``polyserve tune`` writes: the winning config, the config block, the result, the report."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import yaml

from polyserve_worker import config as model_config
from polyserve_worker.tuning import guarding, hardware, measuring, progress, reporting, searching
from polyserve_worker.tuning import space as tuning_space
from tests.worker.test_tuning_space import MLP

MACHINE = hardware.Machine("Intel(R) Xeon(R) Platinum 8480+", 2, True, ())


def ramp(*points: tuple[int, float, float]) -> measuring.Curve:
    return measuring.Curve([measuring.Point(c, r, p / 2, p, p * 1.2, 0) for c, r, p in points])


def outcome(with_winner: bool = True) -> reporting.Outcome:
    the_space = tuning_space.of(
        model_config.parse_pbtxt(MLP), "onnx", tuning_space.Hardware(cpus=2, bf16=True), 50
    )
    yours = searching.Trial(
        0,
        the_space.baseline(),
        curve=ramp((1, 900, 1.5), (8, 3000, 4.0), (64, 4100, 30.0)),
        capacity=4100 if with_winner else 0,
        load_s=0.05,
        label="your config",
    )
    better = searching.Trial(
        1,
        tuning_space.Candidate(
            backend="openvino",
            precision="bf16",
            batching=True,
            max_batch_size=16,
            preferred_batch_size=16,
            max_queue_delay_us=250,
            instances=1,
            threads=2,
            choices=(("PERFORMANCE_HINT", "THROUGHPUT"),),
        ),
        curve=ramp((1, 1100, 1.2), (8, 4000, 3.0), (64, 6000, 20.0), (128, 6100, 70.0)),
        capacity=6000 if with_winner else 0,
        load_s=0.3,
        verdict=guarding.Verdict("bf16", 0.004, 0.003, 0.01, 1.0),
    )
    pruned = searching.Trial(
        2,
        tuning_space.Candidate(backend="onnxruntime", max_batch_size=64, instances=2, threads=1),
        state=searching.PRUNED,
        curve=ramp((1, 300, 3.0), (8, 800, 9.0)),
        capacity=800,
        note="pruned: far behind the best at the same concurrency",
    )
    trials = [yours, better, pruned]
    if not with_winner:
        for t in trials:
            t.curve = ramp((1, 300, 80.0))
    return reporting.Outcome(
        model="mlp",
        slo_ms=50,
        protocol="grpc",
        budget_s=30,
        elapsed_s=28.4,
        machine=MACHINE,
        space=the_space,
        trials=trials,
        winner=searching.choose(trials, 2050) if with_winner else None,
        reference_rate=2050,
    )


def test_the_text_report_has_every_trial_the_winner_against_your_config_and_the_checks() -> None:
    report = reporting.text(outcome())
    assert "winner: trial 1: openvino bf16, batch<=16 pref 16 delay 250us, 1x2t" in report
    assert "capacity per replica: 6000 infer/s at p95 20.0 ms (concurrency 64)" in report
    assert "your config (trial 0): 4100 infer/s; the winner: +46%" in report
    assert "max_batch_size 64 -> 16" in report
    assert "trial 1: bf16 vs fp32: max |diff| 0.004, 0.30% of the output range" in report
    assert "trial 2: pruned" in report
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial  state"))
    assert [line.split()[0] for line in lines[header + 1 : header + 4]] == ["0=", "1*", "2"]


def test_the_html_report_draws_every_trial_and_the_pareto_front_inline() -> None:
    page = reporting.page(outcome())
    svg = page[page.index("<svg") : page.index("</svg>") + len("</svg>")]
    root = ElementTree.fromstring(svg)  # well-formed
    lines = root.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 4  # three trials and the front
    assert "Pareto front" in svg and "SLO p95 50 ms" in svg
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing fetched


def test_the_pareto_front_keeps_the_points_nothing_beats_on_both_axes() -> None:
    points = [(1000, 2.0), (3000, 4.0), (2500, 5.0), (6000, 20.0), (6100, 70.0), (900, 1.0)]
    assert reporting.pareto(points) == [
        (900, 1.0),
        (1000, 2.0),
        (3000, 4.0),
        (6000, 20.0),
        (6100, 70.0),
    ]


def test_the_summary_carries_the_capacity_and_the_tuned_fields_within_a_termination_message() -> (
    None
):
    found = reporting.summary(outcome())
    assert found["capacity"] == 6000 and found["baselineCapacity"] == 4100
    assert found["p95Ms"] == 20.0 and found["concurrency"] == 64
    assert found["cpuModel"] == MACHINE.cpu_model
    assert set(found["config"]) <= set(reporting.TUNED_FIELDS)
    assert found["config"]["parameters"] == {
        "INFERENCE_NUM_THREADS": "2",
        "PERFORMANCE_HINT": "THROUGHPUT",
        "precision": "bf16",
    }
    assert len(json.dumps(found, separators=(",", ":"))) <= reporting.TERMINATION_MESSAGE_LIMIT
    model_config.ModelConfigSpec.model_validate(found["config"])


def test_the_outputs_are_a_config_pbtxt_a_config_block_a_result_and_two_reports(
    tmp_path: Path,
) -> None:
    written = reporting.write(outcome(), tmp_path)
    assert sorted(p.name for p in written) == [
        "config.pbtxt",
        "inferencemodel-config.yaml",
        "report.html",
        "report.txt",
        "result.json",
        "trials.json",
    ]
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert [t["state"] for t in trials] == ["measured", "measured", "pruned"]
    assert trials[1]["candidate"]["precision"] == "bf16" and len(trials[1]["points"]) == 4
    config = model_config.parse_pbtxt((tmp_path / "config.pbtxt").read_text())
    model_config.validate(config)
    assert (config.name, config.backend, config.max_batch_size) == ("mlp", "openvino", 16)
    block = yaml.safe_load((tmp_path / "inferencemodel-config.yaml").read_text())["config"]
    spec = model_config.ModelConfigSpec.model_validate(block)
    assert spec.name is None and spec.input and spec.dynamic_batching is not None


def test_without_a_config_meeting_the_slo_only_the_report_and_result_are_written(
    tmp_path: Path,
) -> None:
    written = reporting.write(outcome(with_winner=False), tmp_path)
    assert sorted(p.name for p in written) == [
        "report.html",
        "report.txt",
        "result.json",
        "trials.json",
    ]
    assert "no config met p95 <= 50 ms" in (tmp_path / "report.txt").read_text()
    assert json.loads((tmp_path / "result.json").read_text())["capacity"] is None


def test_the_progress_is_one_line_per_trial_in_a_log() -> None:
    out = io.StringIO()
    now = [0.0]
    watch = progress.Progress(out, "mlp", 30, 50, tty=False, clock=lambda: now[0])
    first = outcome().trials[0]
    watch.started(0, first.candidate)
    watch.window(0, first.curve.points[0])
    now[0] = 8.0
    watch.finished(first, first)
    watch.close()
    assert out.getvalue() == (
        "[0:08/0:30] trial 0 measured: onnxruntime fp32, batch<=64 delay 0us, 1x1t: "
        "4100 infer/s at p95<=50 ms; best 4100 infer/s (trial 0)\n"
    )


def test_the_progress_bar_redraws_one_line_on_a_terminal() -> None:
    out = io.StringIO()
    now = [0.0]
    watch = progress.Progress(out, "mlp", 30, 50, tty=True, clock=lambda: now[0])
    now[0] = 15.0
    watch.started(3, outcome().trials[1].candidate)
    assert out.getvalue().startswith("\r\033[Ktune mlp [##########----------] 0:15/0:30 trial 3")
    watch.close()
    assert out.getvalue().endswith("\n")
