"""What the operator calls in the API, recorded on the local fleet: the evidence its RBAC is
checked against (``tests/install/rbac_evidence.py``, ``tests/install/test_rbac_evidence.py``).

The test runs a set of end-to-end scenarios in a pytest of their own, with the sandbox's audit
log on (``AUDIT_ENV``): the operator makes its requests there as its own user
(``OPERATOR_USER``), so its requests are told apart from the tests' and the fleet's. Its needs
must all be granted by ``permissions.py`` and held by the committed evidence; with
``POLYSERVE_RECORD_PERMISSIONS=1`` the evidence is written afresh instead (commit it).

The scenarios are the fewest that reach every API call of the operator: a rolling config
change of a model with two replicas (Deployment, Service, ConfigMaps handed to ReplicaSets,
PodDisruptionBudget, NetworkPolicy, events, status), a canary through each Gateway API route
kind promoted by a person (the routes, the canary's Deployment and Service deleted), the
autoscalers of spec.scaling (HPA, KEDA, both deleted), spec.tuning (Jobs, their pods), the
admission webhook with ensembles (members read at admission) and kopf's managed webhook
configurations with a namespace-scoped operator (namespaces watched). Query tiers move
through the canary's calls, and ensembles are reconciled in the webhook's scenarios.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.conftest import AUDIT_ENV, OPERATOR_USER, REAL_CLUSTER_ENV, ROOT
from polyserve_sandbox.apiserver import auditing
from tests.install import rbac_evidence

RECORD_ENV = "POLYSERVE_RECORD_PERMISSIONS"
SCENARIOS = [
    "e2e/test_models.py::test_a_config_change_rolls_a_new_revision_with_no_failed_request_under_load",
    "e2e/test_canary.py::test_with_the_gateway_api_the_route_carries_exact_weights_and_a_person_promotes",
    "e2e/test_scaling.py",
    "e2e/test_tuning.py",
    "e2e/test_webhook.py",
    "e2e/test_admission.py",
]


def _scenarios(basetemp: Path) -> subprocess.CompletedProcess[str]:
    """The scenarios on a fleet of their own, audited; never on a real cluster."""
    env = {k: v for k, v in os.environ.items() if k != REAL_CLUSTER_ENV}
    env[AUDIT_ENV] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short"]
    command += ["--show-capture=no"]  # the operator's log would bury the failure
    return subprocess.run(
        [*command, "--basetemp", str(basetemp), *SCENARIOS],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_request_of_the_operator_is_granted_and_in_the_committed_evidence(
    tmp_path: Path,
) -> None:
    basetemp = tmp_path / "scenarios"
    done = _scenarios(basetemp)
    failed = f"the scenarios failed:\n{done.stdout[-8000:]}{done.stderr[-2000:]}"
    logs = sorted(basetemp.glob("**/logs/audit.log"))
    assert logs, failed
    found: dict[rbac_evidence.Need, set[str]] = {}
    for log in logs:
        for need, names in rbac_evidence.needs(auditing.read(log), OPERATOR_USER).items():
            found.setdefault(need, set()).update(names)
    assert found, "no request of the operator's user was audited"
    if os.environ.get(RECORD_ENV) == "1":
        # Written even when a scenario fails its own assertions (a flaky load check): the
        # requests were made; what a failure cut short shows as granted and never recorded
        # in tests/install/test_rbac_evidence.py.
        rbac_evidence.write(found, user=OPERATOR_USER, scenarios=SCENARIOS)
    assert done.returncode == 0, failed
    missing = rbac_evidence.ungranted(found)
    assert not missing, f"the operator called what permissions.py does not grant: {missing}"
    committed = rbac_evidence.load()
    new = {
        need: names - committed.get(need, set())
        for need, names in found.items()
        if need not in committed or names - committed[need]
    }
    assert not new, (
        f"requests not in {rbac_evidence.EVIDENCE.name}: {new}; record it again "
        f"({RECORD_ENV}=1) and check permissions.py"
    )
