"""A hostile coordinator ships code in the app bundle: it never runs at an institution (issue 19, item 1).

The attack, as the coordinator can mount it with what it holds: a bundle with privfl's id and
version whose ``clientapp`` names a module shipped inside it (here: one that writes a marker
file the moment it is imported, where a real attacker would read the institution's signing
key and data), signed with the coordinator's app-signing key, with the institutions' own
endorsements of privfl's genuine bundle replayed alongside, served to the SuperLink from the
coordinator's app registry port and submitted with ``submit-run.sh`` exactly as a genuine run.

Real Flower processes on loopback with TLS and SuperNode authentication, made by
``privfl deploy init`` and started with the scripts it writes (tests/deployment_harness.py):

- the institutions' SuperNodes refuse the bundle before importing anything ("FAB verification
  failed") and the marker never appears;
- the same bundle *does* run its code when Flower loads it (a control, so the marker cannot be
  absent because the bundle is broken);
- privfl's own bundle, served with the institutions' endorsements, still runs: a DP round is
  aggregated from every institution.

On the code before this change every SuperNode trusted the coordinator's key, and the
hostile bundle's module was imported at each institution.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from privfl.app_bundle import CLIENT_APP, app_pyproject, build_fab
from privfl.cli import main as cli_main
from privfl.deploy import DeployError, credentials
from privfl.deploy import layout as names
from privfl.deploy.create import CoordinatorOptions, add_owner, init_deployment
from privfl.deploy.credentials import load_app_signing_key
from privfl.deploy.demo_data import write_digits_data
from privfl.deploy.endorsement import load_endorsement
from privfl.deploy.layout import DeploymentFolder
from privfl.deploy.registry import AppRegistry, build_app_fab, sign_app, with_endorsements
from tests.deployment_harness import Deployment

OWNERS = ["st-mary", "st-john"]
PURPOSE = "digit recognition study"
HOSTILE_MODULE = "privfl_hostile_payload"


def hostile_app(folder: Path, marker: Path) -> Path:
    """privfl's bundle with one change: its clientapp is a module shipped inside it, which writes ``marker``."""
    folder.mkdir(parents=True)
    pyproject = app_pyproject()
    assert f'clientapp = "{CLIENT_APP}"' in pyproject
    (folder / "pyproject.toml").write_text(
        pyproject.replace(f'clientapp = "{CLIENT_APP}"', f'clientapp = "{HOSTILE_MODULE}:app"'), encoding="utf-8")
    (folder / f"{HOSTILE_MODULE}.py").write_text(
        "import os, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text(f'coordinator code ran in {{os.getcwd()}} as pid {{os.getpid()}}')\n"
        "from privfl.client.app import app  # and then behave, so nothing looks wrong\n", encoding="utf-8")
    return folder


# -- in-process: Flower's own SuperNode check, with the files privfl deploy writes ---------------


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("made") / "deployment"
    init_deployment(root, OWNERS, options=CoordinatorOptions(purpose=PURPOSE))
    return DeploymentFolder(root)


def _flower_fab(fab: bytes, verifications: list[dict]):
    from flwr.supercore.fab import Fab
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    return Fab(hashlib.sha256(fab).hexdigest(), fab, _format_verification(verifications))


def test_flowers_supernode_check_passes_the_endorsed_bundle_and_refuses_the_coordinators(made, tmp_path):
    from flwr.supernode.start_client_internal import _verify_fab

    coordinator_key = load_app_signing_key(made.coordinator.app_signing_key)
    genuine = with_endorsements(sign_app(build_fab(), coordinator_key), made.coordinator.app_endorsements)
    bad = sign_app(build_app_fab(hostile_app(tmp_path / "app", tmp_path / "marker")), coordinator_key)
    replayed = dataclasses.replace(bad, endorsements=tuple(dataclasses.replace(e, fab_sha256=bad.fab_hash)
                                                          for e in genuine.endorsements))
    for owner in OWNERS:
        trusted = yaml.safe_load(made.institution(owner).trusted_entities.read_text())
        assert len(trusted) == 1 and credentials.app_key_id(coordinator_key.public_key()) not in trusted
        assert _verify_fab(_flower_fab(genuine.fab, genuine.verifications()), trusted), owner
        assert not _verify_fab(_flower_fab(bad.fab, bad.verifications()), trusted), owner
        assert not _verify_fab(_flower_fab(replayed.fab, replayed.verifications()), trusted), owner


def test_an_endorsement_that_does_not_verify_is_refused(made, tmp_path):
    path = made.institution(OWNERS[0]).app_endorsement
    good = load_endorsement(path)
    other = load_endorsement(made.institution(OWNERS[1]).app_endorsement)
    forged = [dataclasses.replace(good, fab_sha256="0" * 64), dataclasses.replace(good, signed_at=good.signed_at + 1),
              dataclasses.replace(good, signature=other.signature),
              dataclasses.replace(good, public_key=other.public_key, key_id=other.key_id),
              dataclasses.replace(good, key_id=other.key_id)]
    for i, endorsement in enumerate(forged):
        (tmp_path / f"{i}.json").write_text(endorsement.to_json())
        with pytest.raises(DeployError, match="endorsement of"):
            load_endorsement(tmp_path / f"{i}.json")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(DeployError, match="not an app endorsement"):
        load_endorsement(tmp_path / "junk.json")


def test_add_owner_keeps_an_institutions_endorsement_and_refuses_anothers(made):
    a, b = (made.institution(owner) for owner in OWNERS)
    with pytest.raises(DeployError, match=f"names owner {OWNERS[1]}"):
        add_owner(made.coordinator.path, OWNERS[0], ledger_key=a.signing_public_key,
                  supernode_key=a.supernode_public_key, app_endorsement=b.app_endorsement)
    done = add_owner(made.coordinator.path, OWNERS[0], ledger_key=a.signing_public_key,
                     supernode_key=a.supernode_public_key, app_endorsement=a.app_endorsement)
    assert made.coordinator.app_endorsement(OWNERS[0]) in done.files


def test_endorse_app_signs_the_installed_build_again(made, capsys):
    where = made.institution(OWNERS[0])
    before = load_endorsement(where.app_endorsement)
    assert cli_main(["deploy", "endorse-app", str(where.path)]) == 0
    after = load_endorsement(where.app_endorsement)
    assert after.fab_sha256 == before.fab_sha256 == hashlib.sha256(build_fab()).hexdigest()
    assert after.key_id == before.key_id and after.owner_id == OWNERS[0]
    assert "send it to the coordinator" in capsys.readouterr().out


def test_the_registry_serves_only_endorsements_of_the_bundle_it_serves(made, tmp_path):
    coordinator_key = load_app_signing_key(made.coordinator.app_signing_key)
    other = sign_app(build_app_fab(hostile_app(tmp_path / "app", tmp_path / "marker")), coordinator_key)
    said: list[str] = []
    served = with_endorsements(other, made.coordinator.app_endorsements, log=said.append)
    assert served.endorsements == () and len(served.verifications()) == 1
    assert len(said) == len(OWNERS) and all("will refuse runs" in line for line in said)


# -- the deployment: real Flower processes on loopback -------------------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    deployment = Deployment.create(root, OWNERS, purpose=PURPOSE, num_rounds=1)
    try:
        write_digits_data({owner: deployment.institution(owner) for owner in OWNERS})  # what --demo-data writes
        deployment.start_coordinator()
        deployment.register()
        deployment.nodes = {owner: deployment.start_supernode(deployment.institution(owner)) for owner in OWNERS}
        yield deployment
    finally:
        deployment.stop()
        assert not deployment.alive(), f"processes left running: {deployment.alive()}"


@pytest.fixture(scope="module")
def hostile(deployment, tmp_path_factory):
    """The hostile bundle, signed by the coordinator's key, with the institutions' endorsements replayed."""
    folder = tmp_path_factory.mktemp("hostile-app")
    marker = folder / "MARKER-coordinator-code-ran"
    fab = build_app_fab(hostile_app(folder / "app", marker))
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        assert f"{HOSTILE_MODULE}.py" in archive.namelist()
    app = sign_app(fab, load_app_signing_key(deployment.coordinator.app_signing_key))
    replayed = tuple(dataclasses.replace(load_endorsement(p), fab_sha256=app.fab_hash)
                     for p in sorted(deployment.coordinator.app_endorsements.glob("*.json")))
    assert len(replayed) == len(OWNERS)
    return dataclasses.replace(app, endorsements=replayed), marker


@pytest.mark.e2e
def test_the_hostile_bundle_runs_its_code_when_flower_loads_it(hostile, tmp_path):
    """The control: Flower's own ClientApp loader, given this FAB, imports the shipped module (marker written)."""
    app, marker = hostile
    flwr_home = tmp_path / "flwr-home"
    code = ("import sys\n"
            "from flwr.cli.install import install_from_fab\n"
            "from flwr.clientapp.utils import get_load_client_app_fn\n"
            "fab = open(sys.argv[1], 'rb').read()\n"
            "install_from_fab(fab, skip_prompt=True)\n"
            "get_load_client_app_fn(default_app_ref='', app_path=None, multi_app=True)("
            "'privfl/privfl-app', sys.argv[2], sys.argv[3])\n")
    (tmp_path / "hostile.fab").write_bytes(app.fab)
    control_marker = Path(str(marker))
    try:
        result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hostile.fab"), app.version, app.fab_hash],
                                env={**os.environ, "FLWR_HOME": str(flwr_home)}, capture_output=True, text=True,
                                timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert control_marker.is_file(), "the hostile module was not imported: the test would be vacuous"
    finally:
        control_marker.unlink(missing_ok=True)


@pytest.mark.e2e
def test_a_coordinator_signed_bundle_with_code_never_runs_at_an_institution(deployment, hostile):
    app, marker = hostile
    marker.unlink(missing_ok=True)
    genuine = next(s for s in deployment.started if s.name == "app-registry")
    deployment.stop_one(genuine)
    served: list[str] = []
    server = AppRegistry(app, "127.0.0.1", deployment.registry_port, log=served.append)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = deployment.write_run_config("hostile")
        run_id = deployment.submit(config)  # submit-run.sh: flwr run @privfl/privfl-app==<version>
        assert any("served" in line for line in served), served  # the SuperLink took the hostile bundle
        for owner in OWNERS:
            found = deployment.wait_for_log(deployment.nodes[owner], "FAB verification failed",
                                            "The FAB could not be verified", timeout=240)
            assert found == "FAB verification failed", owner  # signatures were there; none by a trusted key
        time.sleep(5)  # anything that was going to start at a node has had its chance
        assert not marker.exists(), f"coordinator code ran at an institution: {marker.read_text()}"
        deployment.run("stop-hostile", ["flwr", "stop", str(run_id), names.CONNECTION], check=False,
                       env=deployment.flwr_env())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
    assert not marker.exists()


@pytest.mark.e2e
def test_privfls_own_bundle_still_runs_at_every_institution(deployment, hostile):
    _, marker = hostile
    if not any(s.name == "app-registry" and s.process.poll() is None for s in deployment.started):
        registry = deployment.start("app-registry-again", deployment.coordinator.script(names.START_APP_REGISTRY))
        deployment.wait_listening(registry, deployment.registry_port)
    config = deployment.write_run_config("genuine")
    run_id = deployment.submit(config)
    history = deployment.wait_for_run(run_id, deployment.coordinator.runs / "genuine", timeout=420)
    assert history["status"] == "finished" and history["aggregated_rounds"] == 1, history
    record = history["rounds"][-1]
    assert sorted(record["participants"]) == sorted(OWNERS) and record["aggregated"] == len(OWNERS), record
    assert all(r["signed"] and r["status"] == "trained" for r in record["receipts"])
    assert not marker.exists()
