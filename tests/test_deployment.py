"""A deployed federation on loopback: one SuperLink, three SuperNodes, TLS, SuperNode authentication, a signed app.

Everything is started with the scripts ``privfl deploy init`` writes (tests/deployment_harness.py)
and reused across the module to keep it short (about 4 minutes on 2 cores):

1. the DP run (2 rounds, evaluation at the owners): finished, every update aggregated, every
   owner's ledger verified against its registered key and the coordinator's registry, the
   run audited, federated evaluation per owner, the reports of each institution and of the
   coordinator written;
2. refused and logged by Flower: a SuperNode the SuperLink never registered, a SuperNode
   that trusts another CA, and an unsigned (locally built) app;
3. the owners' policies (another issue's acceptance): runs asking for no DP, for less noise
   than the owners' least, and for a purpose they do not allow are refused by every owner
   with a signed refusal; a fourth SuperNode whose policy sets no epsilon budget and a
   fifth whose policy misspells a key refuse unsigned, saying why.
"""

from __future__ import annotations

import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from privfl import pki
from privfl.deploy import layout as names
from privfl.deploy.create import add_owner, create_institution
from privfl.deploy.layout import InstitutionFolder
from privfl.privacy.audit import audit_run
from privfl.privacy.keys import load_public_key
from privfl.privacy.ledger import verify
from privfl.privacy.ledger.registry import CoordinatorRegistry
from privfl.deploy.demo_data import write_digits_data
from tests.deployment_harness import Deployment, free_port_range

pytestmark = pytest.mark.e2e

OWNERS = ["st-mary", "st-john", "city-lab"]
PURPOSE = "digit recognition study"
MIN_NOISE = 1.0  # every owner's min-noise-multiplier
ROUNDS = 2


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """The running deployment: app registry, SuperLink, three registered SuperNodes; stopped by PID at the end.

    Two SuperNodes that must be refused start alongside (they exit by themselves): one whose key
    was never registered, one that trusts another CA.
    """
    root = tmp_path_factory.mktemp("deployment")
    deployment = Deployment.create(root, OWNERS, purpose=PURPOSE, min_noise_multiplier=MIN_NOISE,
                                   num_rounds=ROUNDS)
    try:
        write_digits_data({owner: deployment.institution(owner) for owner in OWNERS})
        deployment.start_coordinator()
        deployment.register()
        deployment.nodes = {owner: deployment.start_supernode(deployment.institution(owner)) for owner in OWNERS}
        deployment.strangers = _start_strangers(deployment, root)
        yield deployment
    finally:
        deployment.stop()
        assert not deployment.alive(), f"processes left running: {deployment.alive()}"


def _start_strangers(deployment: Deployment, root: Path) -> dict:
    superlink = f"127.0.0.1:{deployment.port}"
    first = free_port_range(2)
    unregistered = InstitutionFolder(root / "unregistered")
    create_institution(unregistered.path, "unregistered", superlink=superlink, supernode_port=first,
                       ca_cert=deployment.coordinator.ca_cert)
    other_ca = pki.create_ca("some other CA")
    pki.write_certificate(other_ca.certificate, root / "other-ca.pem")
    wrong_ca = InstitutionFolder(root / "wrong-ca")
    create_institution(wrong_ca.path, "wrong-ca", superlink=superlink, supernode_port=first + 1,
                       ca_cert=root / "other-ca.pem")
    # Registered, so that only the CA can be what stops it.
    add_owner(deployment.coordinator.path, "wrong-ca", ledger_key=wrong_ca.signing_public_key,
              supernode_key=wrong_ca.supernode_public_key)
    deployment.register("wrong-ca")
    return {"unregistered": deployment.start_supernode(unregistered), "wrong-ca": deployment.start_supernode(wrong_ca)}


@pytest.fixture(scope="module")
def main_run(deployment):
    """The DP run of coordinator/experiment.toml, submitted with submit-run.sh (the signed app)."""
    run_id = deployment.submit(deployment.coordinator.experiment, name="submit-main")
    run_dir = Path(tomllib.loads(deployment.coordinator.experiment.read_text())["run-dir"])
    history = deployment.wait_for_run(run_id, run_dir)
    return run_dir, history


def _registry_anchors(deployment: Deployment, owner: str) -> list:
    with CoordinatorRegistry.open_readonly(deployment.coordinator.registry) as registry:
        return registry.anchors(owner)


def _verify_owner_ledgers(deployment: Deployment) -> None:
    for owner in OWNERS:
        report = verify(deployment.institution(owner).ledger, load_public_key(deployment.coordinator.owner_key(owner)),
                        anchored=_registry_anchors(deployment, owner))
        assert report.ok, f"{owner}: {report.problem}"
        assert report.keys_independently_supplied


# -- 1. the DP run ---------------------------------------------------------------------


def test_the_run_finishes_with_every_round_aggregated(main_run):
    _, history = main_run
    assert history["status"] == "finished"
    assert history["aggregated_rounds"] == ROUNDS
    for record in history["rounds"]:
        assert sorted(record["participants"]) == sorted(OWNERS), record
        assert record["aggregated"] == len(OWNERS)
        assert not record["failures"] and not record["refused"]
        assert all(r["signed"] and r["status"] == "trained" for r in record["receipts"])


def test_every_owner_ledger_verifies_against_its_key_and_the_registry(deployment, main_run):
    run_dir, _ = main_run
    _verify_owner_ledgers(deployment)
    for owner in OWNERS:
        assert _registry_anchors(deployment, owner), f"the registry anchored nothing for {owner}"
    audit = audit_run(run_dir, owner_ledgers={owner: deployment.institution(owner).ledger for owner in OWNERS})
    assert audit.ok, audit.summary()
    assert set(audit.epsilon) == set(OWNERS)
    assert all(0 < spend["experiment"] <= spend["budget"] for spend in audit.epsilon.values())


def test_federated_evaluation_per_owner_is_in_the_history(main_run):
    _, history = main_run
    evaluation = history["rounds"][-1]["federated_evaluation"]
    assert evaluation is not None and set(evaluation["owners"]) == set(OWNERS)
    for figures in evaluation["owners"].values():
        # the policies privfl deploy writes keep the record count private (public-record-count = false)
        assert figures["num_examples"] is None and 0.0 <= figures["accuracy"] <= 1.0
    assert 0.0 <= evaluation["accuracy"] <= 1.0


def test_the_signed_app_came_from_the_app_registry(deployment, main_run):
    registry_log = (deployment.logs / "app-registry.log").read_text()
    assert "POST /v1/hub/fetch-fab" in registry_log and "GET /v1/fabs/" in registry_log
    for owner in OWNERS:
        assert "could not be verified" not in deployment.nodes[owner].text()


def test_each_institution_and_the_coordinator_write_their_reports(deployment, main_run):
    """institutions/<owner>/report.sh (its own ledger, its own key) and coordinator/report.sh RUN_DIR."""
    run_dir, _ = main_run
    jobs = {f"report-{owner}": (deployment.institution(owner).script(names.REPORT),
                                deployment.institution(owner).path / "report.html") for owner in OWNERS}
    jobs["report-coordinator"] = (deployment.coordinator.script(names.REPORT), run_dir / "report.html")
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        list(pool.map(lambda item: deployment.run(item[0], ["bash", str(item[1][0]),
                                                            *([str(run_dir)] if "coordinator" in item[0] else []),
                                                            str(item[1][1])], timeout=180), jobs.items()))
    for _, out in jobs.values():
        assert out.is_file() and out.stat().st_size > 0


# -- 2. refused by Flower ----------------------------------------------------------------


def test_an_unregistered_supernode_is_refused(deployment):
    found = deployment.wait_for_log(deployment.strangers["unregistered"], "Failed to activate SuperNode")
    assert found


def test_a_supernode_trusting_another_ca_fails_the_tls_handshake(deployment):
    node = deployment.strangers["wrong-ca"]
    deployment.wait_for_log(node, "CERTIFICATE_VERIFY_FAILED", "SSL/TLS handshake error")
    assert "SuperNode ID" not in node.text()


@pytest.fixture(scope="module")
def unsigned_run(deployment, main_run):
    """A locally built app (privfl app export + flwr run APP_DIR): no signature, so every SuperNode refuses it."""
    app = deployment.coordinator.path / "unsigned-app"
    deployment.run("export-unsigned-app", ["privfl", "app", "export", str(app)])
    config = deployment.write_run_config("unsigned", num_rounds=1, federated_evaluation="off")
    run_id = deployment.submit(config, app=app)
    return deployment.wait_for_run(run_id, deployment.coordinator.runs / "unsigned", timeout=150)


def test_an_unsigned_app_is_refused_by_every_supernode(deployment, unsigned_run):
    assert unsigned_run["status"] == "finished" and unsigned_run["aggregated_rounds"] == 0
    assert not any(r["receipts"] for r in unsigned_run["rounds"]), "an owner answered an unsigned app"
    for owner in OWNERS:
        assert "The FAB could not be verified" in deployment.nodes[owner].text(), owner


# -- 3. the owners' policies -----------------------------------------------------------


def _bad_policy_node(deployment: Deployment, owner: str, port: int, edit) -> object:
    folder = InstitutionFolder(deployment.root / owner)
    create_institution(folder.path, owner, superlink=f"127.0.0.1:{deployment.port}", supernode_port=port,
                       ca_cert=deployment.coordinator.ca_cert)
    folder.policy.write_text(edit(folder.policy.read_text()))
    add_owner(deployment.coordinator.path, owner, ledger_key=folder.signing_public_key,
              supernode_key=folder.supernode_public_key, app_endorsement=folder.app_endorsement)
    deployment.register(owner)
    return deployment.start_supernode(folder)


REFUSALS = {
    "no-dp": ({"dp": False}, "requires DP (dp-required = true)"),
    "low-noise": ({"noise_multiplier": 0.5}, f"requires at least {MIN_NOISE:g} (min-noise-multiplier)"),
    "purpose": ({"purpose": "marketing"}, "'marketing' is not among the purposes this owner allows"),
}
BAD_NODES_JOIN = "purpose"  # the run the SuperNodes with unusable policies take part in (the last one)


@pytest.fixture(scope="module")
def refusal_runs(deployment, main_run, unsigned_run):
    """The three runs each owner must refuse; two more SuperNodes whose policies are unusable join the last."""
    histories = {}
    for name, (changes, _) in REFUSALS.items():
        if name == BAD_NODES_JOIN:
            first = free_port_range(2)
            bad = [
                _bad_policy_node(deployment, "no-budget", first, lambda text: "\n".join(
                    line for line in text.splitlines() if not line.startswith("epsilon-budget"))),
                _bad_policy_node(deployment, "typo", first + 1,
                                 lambda text: text.replace("\nepsilon-budget =", "\nepsilon_budget =")),
            ]
            for node in bad:
                deployment.wait_for_log(node, "SuperNode ID")  # connected before the run starts
        config = deployment.write_run_config(name, num_rounds=1, federated_evaluation="off", **changes)
        run_id = deployment.submit(config)
        histories[name] = deployment.wait_for_run(run_id, deployment.coordinator.runs / name, timeout=150)
    return histories


@pytest.mark.parametrize("name", [
    "no-dp", "low-noise", "purpose"])
def test_each_owner_refuses_a_request_below_its_policy_with_a_signed_refusal(refusal_runs, name):
    history = refusal_runs[name]
    reason = REFUSALS[name][1]
    assert history["status"] == "finished"
    assert history["aggregated_rounds"] == 0
    for record in history["rounds"]:
        assert record["aggregated"] == 0 and not record["participants"]
        for owner in OWNERS:
            assert reason in record["refused"].get(owner, ""), (owner, record["refused"], record["failures"])
        signed = {r["owner_id"] for r in record["receipts"] if r["signed"] and r["status"] == "refused"}
        assert signed == set(OWNERS)


def test_every_ledger_still_verifies_after_the_refusals(deployment, refusal_runs):
    _verify_owner_ledgers(deployment)


def _unsigned_reasons(history: dict) -> list[str]:
    return [r["reason"] for record in history["rounds"] for r in record["receipts"] if not r["signed"]]


def test_an_owner_without_an_epsilon_budget_refuses_unsigned(refusal_runs):
    history = refusal_runs[BAD_NODES_JOIN]
    assert any("no epsilon budget set" in reason for reason in _unsigned_reasons(history))
    assert any("no epsilon budget set" in reason for reason in history["rounds"][0]["refused"].values())


def test_a_policy_with_a_misspelled_key_is_refused_naming_it(refusal_runs):
    reasons = [r for r in _unsigned_reasons(refusal_runs[BAD_NODES_JOIN]) if "epsilon_budget" in r]
    assert reasons
    assert "unknown key 'epsilon_budget'" in reasons[0] and "did you mean 'epsilon-budget'" in reasons[0]

