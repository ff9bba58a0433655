"""What a deployment folder holds, by name: the one place these file names are spelled.

::

    DIR/                              made by `privfl deploy init` (a demo or a test: every part on one disk)
      README.md                       the exact commands, in order
      coordinator/                    the coordinator's part (0700): SuperLink + ServerApp host
        coordinator.key / .pub        Ed25519: signs the federation ledgers and the registry (server/run_dir.py)
        owner-keys/<owner>.pub        each institution's ledger key (Ed25519), registered once
        supernode-keys/<owner>.pub    each institution's SuperNode key (OpenSSH ECDSA P-384), for `flwr supernode register`
        tls/ca.pem, ca.key            the federation's CA (keep ca.key offline once the SuperLink certificate is issued)
        tls/superlink.pem, .key       the SuperLink's TLS certificate and key
        app-signing.key / .pub        Ed25519 (OpenSSH): the registry's own signature on the bundle (no SuperNode trusts it)
        app-endorsements/<owner>.json each institution's signature on its own build of privfl's bundle, served with it
        flwr-home/config.toml         the `flwr` CLI's connection to the SuperLink (root-certificates = tls/ca.pem)
        experiment.toml               the run config (deployment = true, dataset = "none", ...)
        start-superlink.sh, start-app-registry.sh, register-supernodes.sh, submit-run.sh, report.sh
        registry.db, runs/, superlink/    written once the federation runs
      institutions/<owner>/           one institution's part (0700): SuperNode + ClientApp host
        policy.toml                   the institution's own privacy policy (0600)
        signing.key / .pub            Ed25519: signs the institution's ledger (privacy/keys.py)
        supernode-auth.key / .pub     OpenSSH ECDSA P-384: authenticates the SuperNode to the SuperLink
        ca.pem                        the federation CA: the only root the SuperNode trusts for the SuperLink
        app-trust.key / .pub          Ed25519 (OpenSSH): the institution's own key; its SuperNode trusts this key only
        trusted-entities.yaml         that one key, for the SuperNode's --trusted-entities
        app-endorsement.json          its signature on the bundle it built from its installed privfl (sent to the coordinator)
        data/                         train.npz (and evaluation.npz): the institution's own data
        start-supernode.sh, report.sh
        ledger.db                     its privacy ledger, created here (the SuperNode never creates one)
        signing.key.ledger-head       the node's signed record of its ledger's last head (privacy/ledger/node_head.py)
        flwr-home/                    written once the SuperNode runs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from privfl.privacy.policy import LEDGER_FILE, POLICY_FILE, SIGNING_KEY_FILE
from privfl.server.run_dir import COORDINATOR_KEY, COORDINATOR_PUBLIC_KEY, OWNER_KEYS, REGISTRY

COORDINATOR = "coordinator"
INSTITUTIONS = "institutions"
README = "README.md"

CONNECTION = "privfl-deployment"  # the `flwr` CLI's name for the SuperLink connection
DEFAULT_PORT = 9092
DEFAULT_SUPERNODE_PORT = 9094  # Flower's default; a deployment on one host gives each SuperNode its own
FIRST_SUPERNODE_PORT = 9101
DEFAULT_PURPOSE = "federated model training"

# scripts
START_SUPERLINK = "start-superlink.sh"
START_APP_REGISTRY = "start-app-registry.sh"
REGISTER_SUPERNODES = "register-supernodes.sh"
SUBMIT_RUN = "submit-run.sh"
REPORT = "report.sh"
START_SUPERNODE = "start-supernode.sh"


@dataclass(frozen=True)
class CoordinatorFolder:
    path: Path

    coordinator_key = property(lambda self: self.path / COORDINATOR_KEY)
    coordinator_public_key = property(lambda self: self.path / COORDINATOR_PUBLIC_KEY)
    owner_keys = property(lambda self: self.path / OWNER_KEYS)
    supernode_keys = property(lambda self: self.path / "supernode-keys")
    registry = property(lambda self: self.path / REGISTRY)
    tls = property(lambda self: self.path / "tls")
    ca_cert = property(lambda self: self.path / "tls" / "ca.pem")
    ca_key = property(lambda self: self.path / "tls" / "ca.key")
    superlink_cert = property(lambda self: self.path / "tls" / "superlink.pem")
    superlink_key = property(lambda self: self.path / "tls" / "superlink.key")
    app_signing_key = property(lambda self: self.path / "app-signing.key")
    app_signing_public_key = property(lambda self: self.path / "app-signing.pub")
    app_endorsements = property(lambda self: self.path / "app-endorsements")
    flwr_home = property(lambda self: self.path / "flwr-home")
    experiment = property(lambda self: self.path / "experiment.toml")
    app = property(lambda self: self.path / "app")
    runs = property(lambda self: self.path / "runs")
    superlink_state = property(lambda self: self.path / "superlink")

    def owner_key(self, owner_id: str) -> Path:
        return self.owner_keys / f"{owner_id}.pub"

    def supernode_key(self, owner_id: str) -> Path:
        return self.supernode_keys / f"{owner_id}.pub"

    def app_endorsement(self, owner_id: str) -> Path:
        return self.app_endorsements / f"{owner_id}.json"

    def script(self, name: str) -> Path:
        return self.path / name

    def is_coordinator(self) -> bool:
        return self.coordinator_public_key.is_file() and self.owner_keys.is_dir()


@dataclass(frozen=True)
class InstitutionFolder:
    path: Path

    policy = property(lambda self: self.path / POLICY_FILE)
    signing_key = property(lambda self: self.path / SIGNING_KEY_FILE)
    signing_public_key = property(lambda self: self.path / "signing.pub")
    supernode_key = property(lambda self: self.path / "supernode-auth.key")
    supernode_public_key = property(lambda self: self.path / "supernode-auth.pub")
    ca_cert = property(lambda self: self.path / "ca.pem")
    trusted_entities = property(lambda self: self.path / "trusted-entities.yaml")
    app_trust_key = property(lambda self: self.path / "app-trust.key")
    app_trust_public_key = property(lambda self: self.path / "app-trust.pub")
    app_endorsement = property(lambda self: self.path / "app-endorsement.json")
    data = property(lambda self: self.path / "data")
    train_data = property(lambda self: self.path / "data" / "train.npz")
    evaluation_data = property(lambda self: self.path / "data" / "evaluation.npz")
    ledger = property(lambda self: self.path / LEDGER_FILE)
    flwr_home = property(lambda self: self.path / "flwr-home")

    def script(self, name: str) -> Path:
        return self.path / name


@dataclass(frozen=True)
class DeploymentFolder:
    path: Path

    @property
    def coordinator(self) -> CoordinatorFolder:
        return CoordinatorFolder(self.path / COORDINATOR)

    def institution(self, owner_id: str) -> InstitutionFolder:
        return InstitutionFolder(self.path / INSTITUTIONS / owner_id)

    @property
    def readme(self) -> Path:
        return self.path / README
