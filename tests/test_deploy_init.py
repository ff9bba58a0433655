"""``privfl deploy``: the folders, keys, policies and scripts it writes, checked with Flower's own readers.

No Flower process is started here (tests/test_deployment.py runs a deployment); each
artefact is read back the way Flower 1.42 reads it: the SuperNode key with
``load_ssh_private_key``, the public one with ``flwr supernode register``'s loader, the
trusted entities and a signed FAB with the SuperNode's ``_verify_fab``, the app registry
with the SuperLink's own fetch-fab client, the connection with ``flwr``'s config reader.
"""

from __future__ import annotations

import stat
import subprocess
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from privfl import pki
from privfl.cli import main
from privfl.config import ExperimentConfig
from privfl.deploy import DeployError
from privfl.deploy import layout as names
from privfl.deploy.create import (
    CoordinatorOptions,
    PolicyDefaults,
    add_owner,
    create_institution,
    init_deployment,
    parse_owner_ids,
    server_hosts,
)
from privfl.deploy.credentials import load_app_public_key, load_app_signing_key
from privfl.deploy.layout import DeploymentFolder, InstitutionFolder
from privfl.deploy.registry import AppRegistry, build_app_fab, sign_app, verify_app
from privfl.privacy.keys import fingerprint, generate_key, load_private_key, load_public_key, save_public_key
from privfl.privacy.policy import load_policy_file

OWNERS = ["st-mary", "st-john", "city-lab"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> DeploymentFolder:
    root = tmp_path_factory.mktemp("deploy") / "federation"
    init_deployment(root, OWNERS, options=CoordinatorOptions(purpose="sepsis risk model"))
    return DeploymentFolder(root)


# -- what init writes ------------------------------------------------------------------


def test_private_keys_are_0600_and_folders_with_secrets_0700(made):
    coordinator = made.coordinator
    secrets = [coordinator.coordinator_key, coordinator.ca_key, coordinator.superlink_key, coordinator.app_signing_key]
    for owner in OWNERS:
        where = made.institution(owner)
        secrets += [where.signing_key, where.supernode_key, where.policy, where.app_trust_key]
        assert mode(where.path) == 0o700
    assert all(mode(path) == 0o600 for path in secrets), {str(p): oct(mode(p)) for p in secrets}
    assert mode(made.path) == 0o700 and mode(coordinator.path) == 0o700 and mode(coordinator.tls) == 0o700
    for script in [*coordinator.path.glob("*.sh"), *made.path.glob("institutions/*/*.sh")]:
        assert mode(script) == 0o755


def test_each_institution_folder_holds_its_own_secrets_only(made):
    secret_bytes = {owner: [made.institution(owner).signing_key.read_bytes(),
                            made.institution(owner).supernode_key.read_bytes(),
                            made.institution(owner).app_trust_key.read_bytes()] for owner in OWNERS}
    coordinator_secrets = [made.coordinator.coordinator_key.read_bytes(), made.coordinator.ca_key.read_bytes(),
                           made.coordinator.superlink_key.read_bytes(), made.coordinator.app_signing_key.read_bytes()]
    for owner in OWNERS:
        files = [p for p in made.institution(owner).path.rglob("*") if p.is_file()]
        names_found = sorted(str(p.relative_to(made.institution(owner).path)) for p in files)
        assert names_found == sorted(["README.md", "ca.pem", "data/README.txt", "ledger.db", "policy.toml",
                                      "report.sh", "signing.key", "signing.key.ledger-head", "signing.pub",
                                      "start-supernode.sh", "supernode-auth.key", "supernode-auth.pub",
                                      "trusted-entities.yaml", "app-trust.key", "app-trust.pub",
                                      "app-endorsement.json"])
        contents = b"".join(p.read_bytes() for p in files)
        for other, secrets in secret_bytes.items():
            if other != owner:
                assert not any(secret in contents for secret in secrets), f"{owner} holds {other}'s secret"
        assert not any(secret in contents for secret in coordinator_secrets)
    coordinator = b"".join(p.read_bytes() for p in made.coordinator.path.rglob("*") if p.is_file())
    assert not any(secret in coordinator for secrets in secret_bytes.values() for secret in secrets)


def test_the_public_keys_are_registered_at_the_coordinator(made):
    for owner in OWNERS:
        where = made.institution(owner)
        registered = load_public_key(made.coordinator.owner_key(owner))
        assert fingerprint(registered) == fingerprint(load_private_key(where.signing_key))
        assert made.coordinator.supernode_key(owner).read_text().split()[:2] == \
            where.supernode_public_key.read_text().split()[:2]
    coordinator_key = load_private_key(made.coordinator.coordinator_key)
    assert fingerprint(load_public_key(made.coordinator.coordinator_public_key)) == fingerprint(coordinator_key)


def test_supernode_auth_keys_load_as_flower_loads_them(made):
    from flwr.cli.supernode.register import try_load_public_key

    for owner in OWNERS:
        where = made.institution(owner)
        private = serialization.load_ssh_private_key(where.supernode_key.read_bytes(), None)  # flower-supernode
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert where.supernode_public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
        registered = try_load_public_key(made.coordinator.supernode_key(owner))  # flwr supernode register
        ours = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        assert registered == ours


def test_the_superlink_certificate_chains_to_the_ca_and_names_loopback(made):
    ca = pki.load_ca(made.coordinator.ca_cert, made.coordinator.ca_key)
    server = pki.load_certificate(made.coordinator.superlink_cert)
    server.verify_directly_issued_by(ca.certificate)
    from cryptography import x509

    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names_in_cert = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(
        x509.DNSName))
    assert {"127.0.0.1", "localhost", "::1"} <= names_in_cert
    for owner in OWNERS:
        assert made.institution(owner).ca_cert.read_bytes() == made.coordinator.ca_cert.read_bytes()


def test_server_hosts_add_loopback_names_only_for_a_loopback_host():
    assert server_hosts("fl.example.org") == ["fl.example.org"]
    assert server_hosts("localhost") == ["localhost", "127.0.0.1", "::1"]
    assert server_hosts("10.0.0.5") == ["10.0.0.5"]


def test_each_policy_loads_and_names_files_inside_its_institution(made):
    for owner in OWNERS:
        where = made.institution(owner)
        policy = load_policy_file(where.policy).require_deployed()
        assert policy.owner_id == owner and policy.dp_required
        assert policy.allowed_purposes == ("sepsis risk model",) and policy.privacy_units == ("record",)
        assert policy.answer_evaluation and policy.epsilon_budget > 0 and policy.min_noise_multiplier > 0
        assert Path(policy.data) == where.train_data and Path(policy.evaluation_data) == where.evaluation_data
        assert Path(policy.ledger) == where.ledger and Path(policy.signing_key) == where.signing_key
        text = where.policy.read_text()
        for key in ("epsilon-budget", "delta", "min-noise-multiplier", "allowed-purposes", "answer-evaluation"):
            assert f"#   {key}:" in text  # the header explains every key


def test_the_experiment_is_a_deployment_run_config(made):
    config = ExperimentConfig.from_toml(made.coordinator.experiment)
    assert config.deployment and config.dataset == "none" and config.dp
    assert (config.num_features, config.num_classes) == (64, 10)
    assert config.min_owners == len(OWNERS) and config.purpose == "sepsis risk model"
    assert Path(config.coordinator_dir) == made.coordinator.path
    assert Path(config.run_dir).parent == made.coordinator.runs


def test_flwr_reads_the_connection(made, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(made.coordinator.flwr_home))
    connection = read_superlink_connection(names.CONNECTION)
    assert connection.address == "127.0.0.1:9092"
    assert Path(connection.root_certificates) == made.coordinator.ca_cert and not connection.insecure


def test_the_trusted_entities_file_is_what_the_supernode_validates(made):
    """Each SuperNode trusts one key: its own institution's app-trust key, never the coordinator's."""
    trusted = yaml.safe_load(made.institution(OWNERS[0]).trusted_entities.read_text())
    assert len(trusted) == 1
    (key_id, line), = trusted.items()
    key = serialization.load_ssh_public_key(line.encode())  # flower-supernode's _validate_public_keys_ed25519
    assert isinstance(key, ed25519.Ed25519PublicKey)
    own = load_app_signing_key(made.institution(OWNERS[0]).app_trust_key)
    assert key.public_bytes_raw() == own.public_key().public_bytes_raw()
    coordinator = load_app_signing_key(made.coordinator.app_signing_key)
    assert key.public_bytes_raw() != coordinator.public_key().public_bytes_raw()
    assert key_id.startswith("privfl-app-")


def test_every_script_is_valid_bash(made):
    scripts = [*made.coordinator.path.glob("*.sh"), *made.path.glob("institutions/*/*.sh")]
    assert len(scripts) == 5 + 2 * len(OWNERS)
    for script in scripts:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{script}: {result.stderr}"


def test_the_scripts_run_the_documented_commands(made):
    superlink = made.coordinator.script(names.START_SUPERLINK).read_text()
    for flag in ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--enable-supernode-auth",
                 "--disable-runtime-dependency-installation", "--database", "FLWR_SUPERGRID_API_URL"):
        assert flag in superlink
    supernodes = [made.institution(o).script(names.START_SUPERNODE).read_text() for o in OWNERS]
    for text in supernodes:
        for flag in ("--root-certificates", "--auth-supernode-private-key", "--trusted-entities",
                     '--node-config "policy=', "--superlink 127.0.0.1:9092"):
            assert flag in text
    ports = {line.split()[-1] for text in supernodes for line in text.splitlines() if line.strip().startswith("--port")}
    assert len(ports) == len(OWNERS)  # each SuperNode on one host needs its own port
    readme = made.readme.read_text()
    for name in (names.START_APP_REGISTRY, names.START_SUPERLINK, names.REGISTER_SUPERNODES, names.SUBMIT_RUN,
                 names.START_SUPERNODE, names.REPORT):
        assert name in readme
    assert "generates its own keys on its own premises" in readme
    assert "flwr run @privfl/privfl-app==" in made.coordinator.script(names.SUBMIT_RUN).read_text()


def test_docs_show_the_commands_the_scripts_run(made):
    docs = DOCS.read_text()
    for needle in ("privfl deploy init", "privfl deploy institution", "privfl deploy add-owner",
                   "privfl deploy app-registry", "flwr supernode register", "--enable-supernode-auth",
                   "--disable-runtime-dependency-installation", "--auth-supernode-private-key", "--trusted-entities",
                   "--root-certificates", "FLWR_SUPERGRID_API_URL", "flwr run @privfl/privfl-app==",
                   "privfl report", "--public-key", *[f"{s}" for s in (names.START_SUPERLINK, names.START_SUPERNODE,
                                                                    names.REGISTER_SUPERNODES, names.SUBMIT_RUN)]):
        assert needle in docs, needle
    node_config = '--node-config "policy=\\"$HERE/policy.toml\\""'
    assert node_config in made.institution(OWNERS[0]).script(names.START_SUPERNODE).read_text()
    assert node_config in docs


# -- refusals ----------------------------------------------------------------------------


def test_a_folder_that_is_not_empty_is_refused(tmp_path):
    (tmp_path / "dep").mkdir()
    (tmp_path / "dep" / "notes.txt").write_text("keep me")
    with pytest.raises(DeployError, match="not empty"):
        init_deployment(tmp_path / "dep", OWNERS)
    assert (tmp_path / "dep" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    init_deployment(tmp_path / "empty", ["a"])  # an empty folder is fine
    assert (tmp_path / "empty" / "coordinator" / "coordinator.key").is_file()


@pytest.mark.parametrize("owners, message", [
    ("st-mary,-bad,also bad", "'-bad', 'also bad' are not usable as owner ids"),
    ("a,b,a", "a given more than once"),
    ("a,coordinator", "reserved"),
    ("", "at least one institution"),
])
def test_bad_owner_ids_are_named(tmp_path, owners, message):
    with pytest.raises(DeployError, match=message):
        parse_owner_ids(owners)
    with pytest.raises(DeployError):
        init_deployment(tmp_path / "dep", owners)
    assert not (tmp_path / "dep").exists()  # nothing written


def test_a_bad_host_or_a_port_clash_writes_nothing(tmp_path):
    with pytest.raises(DeployError, match="--host"):
        init_deployment(tmp_path / "a", ["x"], options=CoordinatorOptions(host="not a host!"))
    with pytest.raises(DeployError, match="port"):
        init_deployment(tmp_path / "b", ["x", "y"], options=CoordinatorOptions(port=9101))
    with pytest.raises(DeployError, match="delta"):
        init_deployment(tmp_path / "c", ["x"], policy=PolicyDefaults(delta=2.0))
    assert not any(tmp_path.iterdir())


def test_signed_apps_need_a_released_version(tmp_path, monkeypatch):
    import privfl

    monkeypatch.setattr(privfl, "__version__", "0.3.0.dev1")
    with pytest.raises(DeployError, match="--unsigned-apps"):
        init_deployment(tmp_path / "a", ["x"])
    init_deployment(tmp_path / "b", ["x"], options=CoordinatorOptions(signed_apps=False))


# -- an institution on its own premises, registered at the coordinator -------------------


def test_an_institution_made_alone_is_registered_with_its_public_keys(made, tmp_path):
    where = InstitutionFolder(tmp_path / "north-clinic")
    create_institution(where.path, "north-clinic", superlink="127.0.0.1:9092", ca_cert=made.coordinator.ca_cert)
    assert load_policy_file(where.policy).owner_id == "north-clinic"
    done = add_owner(made.coordinator.path, "north-clinic", ledger_key=where.signing_public_key,
                     supernode_key=where.supernode_public_key)
    assert made.coordinator.owner_key("north-clinic") in done.files
    again = add_owner(made.coordinator.path, "north-clinic", ledger_key=where.signing_public_key,
                      supernode_key=where.supernode_public_key)
    assert not again.files and any("already registered" in note for note in again.notes)  # idempotent

    other = tmp_path / "other.pub"
    save_public_key(generate_key(), other)
    with pytest.raises(DeployError, match="already registered with another ledger key"):
        add_owner(made.coordinator.path, "north-clinic", ledger_key=other, supernode_key=where.supernode_public_key)
    with pytest.raises(DeployError, match="already registered for owner north-clinic"):
        add_owner(made.coordinator.path, "south-clinic", ledger_key=where.signing_public_key,
                  supernode_key=where.supernode_public_key)
    with pytest.raises(DeployError, match="private key"):
        add_owner(made.coordinator.path, "south-clinic", ledger_key=other, supernode_key=where.supernode_key)
    with pytest.raises(DeployError, match="signing.pub"):
        add_owner(made.coordinator.path, "south-clinic", ledger_key=where.signing_key,
                  supernode_key=where.supernode_public_key)
    with pytest.raises(DeployError, match="not a coordinator folder"):
        add_owner(where.path, "south-clinic", ledger_key=other, supernode_key=where.supernode_public_key)


def test_the_registry_refuses_a_new_ledger_key_for_a_known_owner(tmp_path):
    from privfl.privacy.ledger.registry import CoordinatorRegistry

    root = DeploymentFolder(tmp_path / "dep")
    init_deployment(root.path, ["a"])
    coordinator = root.coordinator
    stale = generate_key()
    with CoordinatorRegistry.open(coordinator.registry, load_private_key(coordinator.coordinator_key)) as registry:
        registry.register_owner("b", stale.public_key())
    where = InstitutionFolder(tmp_path / "b")
    create_institution(where.path, "b", superlink="127.0.0.1:9092")
    with pytest.raises(DeployError, match="registry already holds another ledger key for b"):
        add_owner(coordinator.path, "b", ledger_key=where.signing_public_key, supernode_key=where.supernode_public_key)


def test_an_institution_without_the_coordinators_files_is_told_what_to_copy(tmp_path):
    made = create_institution(tmp_path / "x", "x", superlink="fl.example.org:9092")
    assert any("ca.pem" in note for note in made.notes) and any("app-endorsement.json" in n for n in made.notes)
    result = subprocess.run(["bash", str(tmp_path / "x" / names.START_SUPERNODE)], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and "ca.pem is missing" in result.stderr
    with pytest.raises(DeployError, match="HOST:PORT"):
        create_institution(tmp_path / "y", "y", superlink="fl.example.org")
    with pytest.raises(DeployError, match="--ca-cert"):
        (tmp_path / "not-a-ca.pem").write_bytes(pki.certificate_pem(pki.issue_server_cert(
            pki.create_ca("ca"), ["localhost"]).certificate))
        create_institution(tmp_path / "z", "z", superlink="h:1", ca_cert=tmp_path / "not-a-ca.pem")


# -- signed apps -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed(made, tmp_path_factory):
    from privfl.app_bundle import export_app

    app = export_app(tmp_path_factory.mktemp("app") / "app")
    return sign_app(build_app_fab(app), load_app_signing_key(made.coordinator.app_signing_key))


def _flower_fab(fab: bytes, verifications: list[dict]):
    import hashlib

    from flwr.supercore.fab import Fab
    from flwr.superlink.servicer.control.control_handlers import _format_verification

    return Fab(hashlib.sha256(fab).hexdigest(), fab, _format_verification(verifications))


def test_a_signed_fab_passes_the_supernodes_own_check(made, signed):
    from flwr.supernode.start_client_internal import _verify_fab

    from privfl.deploy.registry import with_endorsements

    trusted = yaml.safe_load(made.institution(OWNERS[0]).trusted_entities.read_text())
    assert signed.spec == f"@privfl/privfl-app=={signed.version}"
    # The coordinator's signature alone is trusted by no SuperNode; with the institutions' endorsements it runs.
    assert not _verify_fab(_flower_fab(signed.fab, signed.verifications()), trusted)
    signed = with_endorsements(signed, made.coordinator.app_endorsements)
    assert sorted(e.owner_id for e in signed.endorsements) == sorted(OWNERS)
    assert _verify_fab(_flower_fab(signed.fab, signed.verifications()), trusted)
    assert verify_app(signed.fab, signed.verifications(),
                      {signed.key_id: load_app_public_key(made.coordinator.app_signing_public_key)})
    tampered = signed.fab[:-1] + bytes([signed.fab[-1] ^ 1])
    assert not _verify_fab(_flower_fab(tampered, signed.verifications()), trusted)
    other = sign_app(signed.fab, ed25519.Ed25519PrivateKey.generate())
    assert not _verify_fab(_flower_fab(signed.fab, other.verifications()), trusted)


def test_the_app_registry_serves_the_signed_fab_to_the_superlinks_client(signed, monkeypatch):
    from flwr.superlink.servicer.control import control_handlers

    server = AppRegistry(signed, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setattr(control_handlers, "FLWR_SUPERGRID_API_URL", server.api_url)
        fab, verifications, _ = control_handlers._get_remote_fab(None, signed.spec)  # what the SuperLink runs
        assert fab == signed.fab
        assert verifications["valid_license"] and signed.key_id in verifications
        with pytest.raises(Exception, match="not found|Failed to request"):
            control_handlers._get_remote_fab(None, "@privfl/privfl-app==9.9.9")
        with pytest.raises(Exception, match="not found|Failed to request"):
            control_handlers._get_remote_fab(None, "@someone/else==1.0.0")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_app_registry_listens_on_loopback_only(signed):
    with pytest.raises(DeployError, match="loopback"):
        AppRegistry(signed, "0.0.0.0", 0)


# -- the command line ----------------------------------------------------------------------


def test_cli_init_and_its_errors(tmp_path, capsys):
    assert main(["deploy", "init", str(tmp_path / "dep"), "--owners", "a,b", "--port", "9300",
                 "--purpose", "a study"]) == 0
    assert "README.md" in capsys.readouterr().out
    assert (tmp_path / "dep" / "institutions" / "b" / "policy.toml").is_file()
    assert main(["deploy", "init", str(tmp_path / "dep"), "--owners", "a,b"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["deploy", "init", str(tmp_path / "dep2"), "--owners", "ok,no good"]) == 2
    assert "'no good'" in capsys.readouterr().err


def test_cli_institution_and_add_owner(tmp_path, capsys):
    assert main(["deploy", "init", str(tmp_path / "dep"), "--owners", "a"]) == 0
    assert main(["deploy", "institution", str(tmp_path / "b"), "--owner", "b", "--superlink", "127.0.0.1:9092",
                 "--ca-cert", str(tmp_path / "dep/coordinator/tls/ca.pem")]) == 0
    assert "never a .key file" in capsys.readouterr().out
    assert main(["deploy", "add-owner", str(tmp_path / "dep/coordinator"), "--owner", "b",
                 "--ledger-key", str(tmp_path / "b/signing.pub"),
                 "--supernode-key", str(tmp_path / "b/supernode-auth.pub")]) == 0
    assert (tmp_path / "dep/coordinator/owner-keys/b.pub").is_file()


@pytest.mark.parametrize("action", ["init", "institution", "add-owner", "app-registry"])
def test_cli_help_has_an_example(action, capsys):
    with pytest.raises(SystemExit):
        main(["deploy", action, "--help"])
    assert "example" in capsys.readouterr().out


def test_cli_app_registry_needs_an_exported_app(tmp_path, capsys):
    assert main(["deploy", "app-registry", str(tmp_path), "--signing-key", str(tmp_path / "k")]) == 2
    assert "privfl app export" in capsys.readouterr().err


def test_policy_settings_from_the_command_line(tmp_path):
    assert main(["deploy", "init", str(tmp_path / "dep"), "--owners", "a", "--epsilon-budget", "3",
                 "--delta", "1e-6", "--min-noise-multiplier", "0.8", "--num-features", "13",
                 "--num-classes", "2", "--unsigned-apps"]) == 0
    root = DeploymentFolder(tmp_path / "dep")
    policy = load_policy_file(root.institution("a").policy)
    assert (policy.epsilon_budget, policy.delta, policy.min_noise_multiplier) == (3.0, 1e-6, 0.8)
    config = tomllib.loads(root.coordinator.experiment.read_text())
    assert (config["num-features"], config["num-classes"]) == (13, 2)
    assert not root.coordinator.app_signing_key.exists()
    assert "--trusted-entities" not in root.institution("a").script(names.START_SUPERNODE).read_text()
    assert 'flwr run "$HERE/app"' in root.coordinator.script(names.SUBMIT_RUN).read_text()


def test_demo_data_gives_each_institution_a_disjoint_share_that_passes_the_data_check(tmp_path, capsys):
    import numpy as np

    folder = tmp_path / "fed"
    assert main(["deploy", "init", str(folder), "--owners", "a,b,c", "--demo-data"]) == 0
    assert "demo data:" in capsys.readouterr().out
    seen = []
    for owner in ("a", "b", "c"):
        data = folder / "institutions" / owner / "data"
        for name in ("train.npz", "evaluation.npz"):
            assert main(["data", "check", str(data / name), "--delta", "1e-5", "--num-classes", "10"]) == 0
            with np.load(data / name) as arrays:
                assert arrays["features"].shape[1] == 64
                seen.extend(map(tuple, arrays["features"].round(4)))
    assert len(seen) == 1797  # every digit once: the shares are disjoint and cover the data set


def test_demo_data_refuses_another_model_shape(tmp_path, capsys):
    code = main(["deploy", "init", str(tmp_path / "fed"), "--owners", "a,b", "--demo-data", "--num-features", "12"])
    assert code != 0 and "--demo-data writes digits" in capsys.readouterr().err
    assert not (tmp_path / "fed").exists()
