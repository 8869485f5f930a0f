"""The operator keeps converging through a faulty control plane: with the API server refusing
requests at random (409, 429, 500, replies lost after the write) and breaking its watches
(closed early, 410 Expired), and with the operator itself SIGKILLed at random points of its
reconciles, the same inputs end in the same state as a quiet run: the same objects with the
same specs, the same status conditions, nothing duplicated, nothing orphaned.

Each test runs on a fleet of its own with hollow pods (``e2e/hollow.py``: the control plane
alone), the operator as a real process. A quiet namespace is reconciled first and kept as the
reference; then the same inputs go into a second namespace through the faults, and the two
are compared with their namespace names set aside. The quiet namespace must come through
unchanged too.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from e2e import hollow
from polyserve_operator import k8s

#: Every verb refused now and then, watches broken often: far more than a real control plane
#: does, so that every path of the operator meets a fault in one run.
FAULTS = {
    "seed": 13,
    "rules": [
        {
            "verbs": ["POST", "PUT", "PATCH", "APPLY", "DELETE"],
            "conflict": 0.05,
            "throttle": 0.05,
            "error": 0.05,
            "lostReply": 0.03,
            "retryAfterSeconds": 1,
        },
        {"verbs": ["GET", "LIST", "WATCH"], "throttle": 0.03, "error": 0.05},
    ],
    "watches": {"close": 0.3, "closeWithinSeconds": 5, "expire": 0.3},
}
SETTLE_SECONDS = 120.0


def _namespace(client: k8s.Client, name: str) -> None:
    client.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def _settled(
    client: k8s.Client, namespace: str, operator: hollow.OperatorProcess, *, gone: str = ""
) -> hollow.Snapshot:
    def probe() -> hollow.Snapshot | None:
        found = hollow.snapshot(client, namespace)
        ready = found.settled() and (not gone or gone not in found.resources)
        return found if ready else None

    try:
        found: hollow.Snapshot = hollow.wait_for(
            f"{namespace} to settle",
            probe,
            SETTLE_SECONDS,
            describe=lambda: hollow.snapshot(client, namespace).resources,
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
    return found


def _differences(ours: hollow.Snapshot, reference: hollow.Snapshot) -> list[str]:
    found = []
    for part in ("resources", "owned"):
        mine, theirs = getattr(ours, part), getattr(reference, part)
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                found.append(f"{key}: {mine.get(key)!r} != {theirs.get(key)!r}")
    return found


def _matches(
    client: k8s.Client,
    namespace: str,
    reference: hollow.Snapshot,
    operator: hollow.OperatorProcess,
) -> None:
    """Wait until the namespace holds what the reference holds (the last hand-offs of a
    settled namespace may still be a refresh away), then check that it stays so."""
    try:
        hollow.wait_for(
            f"{namespace} to match the quiet run",
            lambda: hollow.snapshot(client, namespace) == reference,
            60,
            describe=lambda: _differences(hollow.snapshot(client, namespace), reference),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.tail()}") from None
    time.sleep(1.0)  # a few refreshes later, still the same
    assert _differences(hollow.snapshot(client, namespace), reference) == []


def _still(client: k8s.Client, namespace: str, seconds: float = 1.5) -> hollow.Snapshot:
    """The namespace once it has not changed for ``seconds`` (several refresh intervals)."""
    last, since = hollow.snapshot(client, namespace), time.monotonic()
    while time.monotonic() - since < seconds:
        time.sleep(0.2)
        now = hollow.snapshot(client, namespace)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _reference(client: k8s.Client, operator: hollow.OperatorProcess) -> list[hollow.Snapshot]:
    """The quiet run: both rounds of inputs in namespace ``quiet``, each settled and still."""
    _namespace(client, "quiet")
    hollow.apply_all(client, hollow.first_inputs("quiet"))
    _settled(client, "quiet", operator)
    first = _still(client, "quiet")
    docs, deleted = hollow.second_inputs("quiet")
    hollow.apply_all(client, docs)
    hollow.delete_all(client, "quiet", deleted)
    _settled(client, "quiet", operator, gone="InferenceModel/plain")
    return [first, _still(client, "quiet")]


@pytest.mark.timeout(600)  # about 20 s on a quiet machine
def test_through_injected_faults_the_end_state_equals_a_quiet_run(tmp_path: Path) -> None:
    with hollow.fleet(tmp_path / "fleet") as kubeconfig:
        client = k8s.connect(kubeconfig, "polyserve-e2e")  # retries what the faults refuse
        operator = hollow.OperatorProcess(kubeconfig, tmp_path / "operator.log")
        operator.start()
        try:
            quiet = _reference(client, operator)
            hollow.set_faults(kubeconfig, FAULTS)
            operator.stop()  # its next start (discovery, lists, watches) meets faults too
            operator.start()
            _namespace(client, "stormy")
            hollow.apply_all(client, hollow.first_inputs("stormy"))
            _settled(client, "stormy", operator)
            _matches(client, "stormy", quiet[0], operator)
            docs, deleted = hollow.second_inputs("stormy")
            hollow.apply_all(client, docs)
            hollow.delete_all(client, "stormy", deleted)
            _settled(client, "stormy", operator, gone="InferenceModel/plain")
            _matches(client, "stormy", quiet[1], operator)
            assert operator.running, operator.tail()
            _matches(client, "quiet", quiet[1], operator)
            assert hollow.orphans(client, "stormy") == []
            injected = hollow.injected(kubeconfig)
            hollow.set_faults(kubeconfig, None)
            # The faults did happen, of every kind (how many depends on the run's length: a
            # watch expires only when it is restarted, a few times in 20 s).
            for fault in ("409", "429", "500", "lost", "410", "closed"):
                assert injected.get(fault, 0) >= 1, injected
            assert sum(injected.values()) >= 30, injected
        finally:
            operator.stop()
            client.close()


def _kills(tmp_path: Path, kills: int, seed: int) -> None:
    """Both rounds of inputs in namespace ``killed`` while the operator is SIGKILLed
    ``kills`` times at random moments, a new one started each time."""
    chance = random.Random(seed)
    with hollow.fleet(tmp_path / "fleet") as kubeconfig:
        client = k8s.connect(kubeconfig, "polyserve-e2e")
        operator = hollow.OperatorProcess(kubeconfig, tmp_path / "operator.log")
        operator.start()
        try:
            quiet = _reference(client, operator)
            _namespace(client, "killed")
            hollow.apply_all(client, hollow.first_inputs("killed"))
            second_round = kills // 2
            for kill in range(kills):
                # A moment inside its work: the inputs of a round are a few dozen writes and
                # status refreshes away, the next start is ~1 s of imports and list+watch.
                time.sleep(chance.uniform(0.05, 1.5))
                operator.kill()
                if kill == second_round:
                    docs, deleted = hollow.second_inputs("killed")
                    hollow.apply_all(client, docs)
                    hollow.delete_all(client, "killed", deleted)
                operator.start(wait=chance.random() < 0.5)  # killed while starting, too
            _settled(client, "killed", operator, gone="InferenceModel/plain")
            _matches(client, "killed", quiet[1], operator)
            _matches(client, "quiet", quiet[1], operator)
            assert hollow.orphans(client, "killed") == []
            assert operator.starts == kills + 1
        finally:
            operator.stop()
            client.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_operator_killed_fifty_times_mid_reconcile_ends_as_a_quiet_run(tmp_path: Path) -> None:
    _kills(tmp_path, kills=50, seed=50)


@pytest.mark.timeout(300)  # about 20 s on a quiet machine
def test_an_operator_killed_a_few_times_mid_reconcile_ends_as_a_quiet_run(tmp_path: Path) -> None:
    _kills(tmp_path, kills=4, seed=4)
