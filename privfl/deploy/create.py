"""Create a deployment: the coordinator's folder, each institution's folder, and registering owners.

Three entry points, one per way a federation comes together:

- :func:`create_institution` (``privfl deploy institution``): what an institution runs on
  its own premises: its ledger key, its SuperNode key, its policy, its start scripts,
  and its app-trust key with its endorsement of privfl's bundle as it builds it
  (:mod:`privfl.deploy.endorsement`: its SuperNode runs that bundle and nothing else).
  It sends the coordinator only ``signing.pub``, ``supernode-auth.pub`` and
  ``app-endorsement.json``.
- :func:`add_owner` (``privfl deploy add-owner``): the coordinator registers the public
  keys an institution sent (its ledger key in ``owner-keys/``, which the ServerApp
  verifies every receipt against; its SuperNode key in ``supernode-keys/``, which
  ``register-supernodes.sh`` hands to the SuperLink).
- :func:`init_deployment` (``privfl deploy init``): both sides on one disk, for a
  demonstration or a test: the coordinator's folder, then one institution folder per
  owner made and registered through the two functions above.

Nothing is overwritten: a folder that exists must be empty, and a failed init removes
what it created.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import privfl
from privfl import pki, settings
from privfl.config import ConfigError, ExperimentConfig
from privfl.deploy import credentials, scripts
from privfl.deploy import layout as names
from privfl.deploy.endorsement import institution_app_trust, load_endorsement
from privfl.deploy.errors import DeployError
from privfl.deploy.layout import CoordinatorFolder, DeploymentFolder, InstitutionFolder
from privfl.deploy.registry import VERSION as APP_VERSION
from privfl.privacy.keys import (
    KeyFileError,
    check_owner_id,
    fingerprint,
    generate_key,
    load_public_key,
    save_private_key,
    save_public_key,
)
from privfl.privacy.ledger.node_head import enrol_owner_ledger
from privfl.privacy.policy import OwnerPolicy, describe_policy_keys, write_policy_file
from privfl.settings import SettingsError

SECRET_DIR = 0o700
EXECUTABLE = 0o755
RESERVED_OWNER_IDS = ("coordinator",)  # the registry's own name for the coordinator's key


@dataclass(frozen=True)
class PolicyDefaults:
    """What ``privfl deploy`` writes into a new institution's policy (the institution edits it)."""

    purpose: str = names.DEFAULT_PURPOSE
    epsilon_budget: float = 8.0
    delta: float = 1e-5
    min_noise_multiplier: float = 1.0
    answer_evaluation: bool = True


@dataclass(frozen=True)
class ExperimentDefaults:
    """What ``privfl deploy init`` writes into the coordinator's experiment.toml."""

    experiment: str = "deployment"
    num_features: int = 64  # digits (8x8 images); set to the institutions' data
    num_classes: int = 10
    model: str = "logreg"
    num_rounds: int = 3
    noise_multiplier: float = 2.3


@dataclass
class Created:
    """What a ``privfl deploy`` command made (for its summary)."""

    root: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# -- checks ----------------------------------------------------------------------------


def parse_owner_ids(text: str | Sequence[str]) -> list[str]:
    """``a,b,c`` (or a list) as owner ids: each valid, none twice, none reserved."""
    raw = [part.strip() for part in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    if not raw or raw == [""]:
        raise DeployError("--owners: give at least one institution id, e.g. --owners st-mary,st-john,city-lab")
    bad: list[str] = []
    for owner in raw:
        try:
            check_owner_id(owner)
        except ValueError:
            bad.append(repr(owner))
    if bad:
        raise DeployError(f"--owners: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not usable as owner ids: "
                          "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    reserved = [o for o in raw if o.lower() in RESERVED_OWNER_IDS]
    if reserved:
        raise DeployError(f"--owners: {', '.join(reserved)} is reserved (the registry's name for the coordinator)")
    twice = sorted({o for o in raw if raw.count(o) > 1})
    if twice:
        raise DeployError(f"--owners: {', '.join(twice)} given more than once")
    return raw


def check_owner(owner_id: str) -> str:
    return parse_owner_ids([owner_id])[0]


def check_port(port: int, what: str = "--port") -> int:
    if not 1 <= port <= 65535:
        raise DeployError(f"{what} {port} is not a TCP port (1-65535)")
    return port


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.")


def server_hosts(host: str) -> list[str]:
    """The names the SuperLink's certificate is valid for: the host, plus loopback names for a loopback host."""
    hosts = [host]
    if is_loopback(host):
        hosts += [h for h in ("localhost", "127.0.0.1", "::1") if h != host]
    return hosts


def superlink_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _fresh_folder(path: Path, what: str) -> bool:
    """Make ``path`` (0700) for a new folder; True if this call created it. An existing one must be empty."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise DeployError(f"{path} exists and is not a folder; choose a new {what} folder")
        if any(path.iterdir()):
            raise DeployError(f"{path} already exists and is not empty; privfl deploy never overwrites: choose a new "
                              f"{what} folder (or empty this one)")
        os.chmod(path, SECRET_DIR)
        return False
    path.mkdir(parents=True, mode=SECRET_DIR)
    os.chmod(path, SECRET_DIR)  # whatever the umask
    return True


def _undo(path: Path, created: bool) -> None:
    if created:
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_dir():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink()


def _write_text(path: Path, text: str, mode: int = 0o644) -> Path:
    return credentials.write_file(path, text.encode("utf-8"), mode)


def _mkdir(path: Path, mode: int = SECRET_DIR) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return path


# -- an institution --------------------------------------------------------------------


def policy_header(owner_id: str) -> str:
    keys = "\n".join(f"  {key}: {text}" for key, _, text in describe_policy_keys())
    return (f"privfl owner policy of institution {owner_id}: your own rules for your own data.\n"
            "Your SuperNode reads this file (--node-config 'policy=\"<this file>\"') and enforces it whatever the\n"
            "coordinator asks: a request below it is refused with a signed refusal in your ledger. The coordinator\n"
            "never sees this file. Relative paths are relative to this file's folder. After editing, check it:\n"
            "  privfl policy check policy.toml\n"
            "Every key:\n" + keys + "\n"
            "Written by `privfl deploy` with defaults for a first run: set epsilon-budget, delta (well below\n"
            "1/number of your records) and min-noise-multiplier to what your data-protection officer decided.")


def institution_policy(owner_id: str, defaults: PolicyDefaults, federation: str) -> OwnerPolicy:
    try:
        return _institution_policy(owner_id, defaults, federation)
    except SettingsError as err:  # a bad budget, delta or purpose
        raise DeployError(str(err)) from None


def _institution_policy(owner_id: str, defaults: PolicyDefaults, federation: str) -> OwnerPolicy:
    return OwnerPolicy(
        owner_id=owner_id, epsilon_budget=defaults.epsilon_budget, delta=defaults.delta, dp_required=True,
        min_noise_multiplier=defaults.min_noise_multiplier, allowed_purposes=(defaults.purpose,),
        privacy_units=("record",), answer_evaluation=defaults.answer_evaluation,
        data="data/train.npz", evaluation_data="data/evaluation.npz" if defaults.answer_evaluation else "",
        ledger="ledger.db", signing_key="signing.key", federation=federation,
    )


def create_institution(folder: str | Path, owner_id: str, *, superlink: str,
                       supernode_port: int = names.DEFAULT_SUPERNODE_PORT, ca_cert: str | Path | None = None,
                       signed_apps: bool = True, policy: PolicyDefaults = PolicyDefaults()) -> Created:
    """One institution's folder: its keys, policy and scripts (no one else's secrets).

    With signed apps (the default) its SuperNode trusts one key, made here: the bundle it
    runs is the one this institution built from its installed privfl and signed; there is
    no way to make it trust a key the coordinator holds.
    """
    owner_id = check_owner(owner_id)
    check_port(supernode_port, "--supernode-port")
    if not superlink or any(c.isspace() for c in superlink) or ":" not in superlink:
        raise DeployError(f"--superlink {superlink!r}: give the SuperLink's HOST:PORT, e.g. superlink.example.org:9092")
    if ca_cert is not None and not Path(ca_cert).is_file():
        raise FileNotFoundError(f"--ca-cert {ca_cert}: no such file")
    if ca_cert is not None:
        try:
            pki.load_ca_certificates(ca_cert)
        except pki.PkiError as err:
            raise DeployError(f"--ca-cert: {err}") from None
    policy_object = institution_policy(owner_id, policy, federation=superlink)
    where = InstitutionFolder(Path(folder).resolve())
    created = _fresh_folder(where.path, "institution")
    try:
        made = Created(where.path)
        _mkdir(where.data)
        _write_text(where.data / "README.txt",
                    "Put this institution's data here: train.npz (training) and evaluation.npz (held out, for the\n"
                    "coordinator's evaluation requests), or CSV/Parquet files named in ../policy.toml.\n"
                    "Schema: numeric feature columns and an integer label column (docs/data.md);\n"
                    "check a file with: privfl data check data/train.npz\n")
        key = generate_key()
        save_private_key(key, where.signing_key)
        save_public_key(key, where.signing_public_key)
        credentials.supernode_auth_key_pair(where.supernode_key, where.supernode_public_key,
                                            f"privfl-supernode-{owner_id}")
        write_policy_file(policy_object, where.policy, header=policy_header(owner_id))
        enrol_owner_ledger(where.ledger, owner_id, key, where.signing_key)  # the node itself never creates one
        if ca_cert is not None:
            credentials.write_public(where.ca_cert, Path(ca_cert).read_bytes())
        if signed_apps:
            endorsement = institution_app_trust(where.app_trust_key, where.app_trust_public_key,
                                                where.trusted_entities, where.app_endorsement, owner_id)
        _write_text(where.script(names.START_SUPERNODE), scripts.start_supernode(superlink, supernode_port, signed_apps),
                    EXECUTABLE)
        _write_text(where.script(names.REPORT), scripts.institution_report(), EXECUTABLE)
        _write_text(where.path / names.README, scripts.institution_readme(owner_id, superlink, signed_apps))
        made.files = sorted(p for p in where.path.rglob("*") if p.is_file())
        made.notes.append(f"ledger key fingerprint {fingerprint(key)}")
        if ca_cert is None:
            made.notes.append("copy the federation's CA certificate from the coordinator to ca.pem")
        if signed_apps:
            made.notes.append(f"your SuperNode runs only {endorsement.app} as built here (sha256 "
                              f"{endorsement.fab_sha256[:16]}...): send the coordinator {where.app_endorsement.name}")
        return made
    except BaseException:
        _undo(where.path, created)
        raise


# -- the coordinator -------------------------------------------------------------------


@dataclass(frozen=True)
class CoordinatorOptions:
    host: str = "127.0.0.1"
    port: int = names.DEFAULT_PORT
    bind: str | None = None  # default: the host
    registry_port: int | None = None  # default: port + 1
    signed_apps: bool = True
    min_owners: int = 1
    purpose: str = names.DEFAULT_PURPOSE
    experiment: ExperimentDefaults = ExperimentDefaults()

    def settings(self) -> scripts.CoordinatorSettings:
        return scripts.CoordinatorSettings(host=self.host, port=self.port, bind=self.bind or self.host,
                                           registry_port=self.registry_port or self.port + 1,
                                           signed_apps=self.signed_apps)


def experiment_config(where: CoordinatorFolder, options: CoordinatorOptions) -> ExperimentConfig:
    e = options.experiment
    try:
        return ExperimentConfig(
            experiment=e.experiment, deployment=True, dataset="none", num_features=e.num_features,
            num_classes=e.num_classes, model=e.model, num_rounds=e.num_rounds, min_owners=options.min_owners,
            federated_evaluation="last", purpose=options.purpose, dp=True, noise_multiplier=e.noise_multiplier,
            coordinator_dir=str(where.path), run_dir=str(where.runs / e.experiment),
        )
    except ConfigError as err:
        raise DeployError(str(err)) from None


EXPERIMENT_KEYS = ("experiment", "deployment", "dataset", "num-features", "num-classes", "model", "num-rounds",
                   "min-owners", "federated-evaluation", "purpose", "dp", "noise-multiplier", "max-grad-norm",
                   "local-epochs", "batch-size", "learning-rate", "coordinator-dir", "run-dir")


def experiment_toml(config: ExperimentConfig) -> str:
    from privfl.config import describe_keys

    helps = {key: text for key, _, text in describe_keys()}
    values = config.to_mapping()
    lines = ["# privfl run config of this deployment: `flwr run ... --run-config experiment.toml` (submit-run.sh).",
             "# The coordinator writes it; nothing in it can lower an institution's protection: each institution's",
             "# own policy.toml decides its budget, delta, accountant, least noise and purposes, and refuses a",
             "# request below them (a signed refusal). Every other key of privfl's config may be added (privfl/config.py).",
             "# Each run needs its own run-dir: copy this file for the next run and change experiment and run-dir.",
             ""]
    for key in EXPERIMENT_KEYS:
        lines.append(f"# {helps[key]}")
        lines.append(f"{key} = {settings.toml_value(values[key])}")
    return "\n".join(lines) + "\n"


def flwr_config_toml(where: CoordinatorFolder, host: str, port: int) -> str:
    return (f"# The `flwr` CLI's connections (FLWR_HOME={where.flwr_home}); written by privfl deploy.\n"
            f'[superlink]\ndefault = "{names.CONNECTION}"\n\n'
            f"[superlink.{names.CONNECTION}]\n"
            f"address = {settings.toml_value(superlink_address(host, port))}\n"
            f"root-certificates = {settings.toml_value(str(where.ca_cert))}\n")


def create_coordinator(folder: str | Path, options: CoordinatorOptions = CoordinatorOptions()) -> Created:
    """The coordinator's folder: its key, TLS, app signing, Flower connection, run config and scripts."""
    check_port(options.port)
    s = options.settings()
    check_port(s.registry_port, "--registry-port")
    if s.signed_apps and s.registry_port == options.port:
        raise DeployError("--registry-port must differ from --port")
    if s.signed_apps and not APP_VERSION.match(privfl.__version__):
        raise DeployError(f"signed apps are fetched by name and version x.y.z, and this privfl is {privfl.__version__}: "
                          "install a released privfl, or give --unsigned-apps")
    try:  # everything that can be refused, before anything is written
        ca = pki.create_ca(f"privfl federation CA ({options.host})"[:64], days=3650)
        server = pki.issue_server_cert(ca, server_hosts(options.host), days=825)
    except pki.PkiError as err:
        raise DeployError(f"--host {options.host!r}: {err}") from None
    where = CoordinatorFolder(Path(folder).resolve())
    config = experiment_config(where, options)
    created = _fresh_folder(where.path, "coordinator")
    try:
        key = generate_key()
        save_private_key(key, where.coordinator_key)
        save_public_key(key, where.coordinator_public_key)
        _mkdir(where.owner_keys, 0o755)
        _mkdir(where.supernode_keys, 0o755)
        _mkdir(where.tls)
        pki.write_pair(ca, where.ca_cert, where.ca_key)
        pki.write_pair(server, where.superlink_cert, where.superlink_key)
        if s.signed_apps:
            credentials.app_signing_key_pair(where.app_signing_key, where.app_signing_public_key,
                                             "privfl-app-signing")
            _mkdir(where.app_endorsements, 0o755)
        _mkdir(where.flwr_home)
        _write_text(where.flwr_home / "config.toml", flwr_config_toml(where, options.host, options.port))
        _write_text(where.experiment, experiment_toml(config))
        _mkdir(where.runs)
        texts = coordinator_scripts(s)
        for name, text in texts.items():
            _write_text(where.script(name), text, EXECUTABLE)
        made = Created(where.path, sorted(p for p in where.path.rglob("*") if p.is_file()))
        made.notes.append(f"coordinator key fingerprint {fingerprint(key)}")
        return made
    except BaseException:
        _undo(where.path, created)
        raise


def coordinator_scripts(s: scripts.CoordinatorSettings) -> dict[str, str]:
    texts = {names.START_SUPERLINK: scripts.start_superlink(s), names.REGISTER_SUPERNODES: scripts.register_supernodes(),
             names.SUBMIT_RUN: scripts.submit_run(s), names.REPORT: scripts.coordinator_report()}
    if s.signed_apps:
        texts[names.START_APP_REGISTRY] = scripts.start_app_registry(s)
    return texts


# -- registering an institution at the coordinator ------------------------------------


def add_owner(coordinator_dir: str | Path, owner_id: str, *, ledger_key: str | Path,
              supernode_key: str | Path, app_endorsement: str | Path | None = None) -> Created:
    """Register an institution's ledger key and SuperNode key (public halves) at the coordinator.

    Idempotent for the same keys; a different ledger key for a known owner is refused
    (the registry accepts one key per owner: see docs/deployment.md, key rotation).
    ``app_endorsement`` (the institution's ``app-endorsement.json``) is kept in
    ``app-endorsements/<owner>.json``, replacing an older one (an upgrade re-endorses), for
    the app registry to serve: without it the institution's SuperNode refuses every run.
    """
    owner_id = check_owner(owner_id)
    where = CoordinatorFolder(Path(coordinator_dir).resolve())
    if not where.is_coordinator():
        raise DeployError(f"{where.path} is not a coordinator folder (no {where.coordinator_public_key.name} and "
                          f"{where.owner_keys.name}/): give the folder `privfl deploy init` made (DIR/coordinator)")
    try:
        ledger_public = load_public_key(ledger_key)
    except KeyFileError as err:
        raise DeployError(f"--ledger-key: {err} (the institution's signing.pub)") from None
    auth_public = credentials.load_supernode_public_key(supernode_key)
    endorsement = load_endorsement(app_endorsement) if app_endorsement is not None else None
    if endorsement is not None and endorsement.owner_id != owner_id:
        raise DeployError(f"--app-endorsement names owner {endorsement.owner_id}, not {owner_id}")
    auth_line = credentials.openssh_public_line(auth_public, f"privfl-supernode-{owner_id}")

    made = Created(where.path)
    known_ledger = where.owner_key(owner_id)
    if known_ledger.exists():
        if fingerprint(load_public_key(known_ledger)) != fingerprint(ledger_public):
            raise DeployError(
                f"owner {owner_id} is already registered with another ledger key ({known_ledger}); an owner's ledger "
                "key cannot be replaced (the registry refuses it and every anchored head would be orphaned): see "
                "'Key rotation' in docs/deployment.md")
        made.notes.append(f"ledger key of {owner_id} was already registered")
    else:
        for other in sorted(where.owner_keys.glob("*.pub")):
            if fingerprint(load_public_key(other)) == fingerprint(ledger_public):
                raise DeployError(f"this ledger key is already registered for owner {other.stem}: every institution "
                                  "needs its own key")
    _check_registry(where, owner_id, ledger_public)
    known_auth = where.supernode_key(owner_id)
    if known_auth.exists():
        if credentials.load_supernode_public_key(known_auth).public_numbers() != auth_public.public_numbers():
            raise DeployError(
                f"owner {owner_id} already has a SuperNode key ({known_auth}); to replace it, unregister the old one "
                f"(flwr supernode unregister NODE_ID {names.CONNECTION}), remove {known_auth} and add the new one")
        made.notes.append(f"SuperNode key of {owner_id} was already registered")
    else:
        for other in sorted(where.supernode_keys.glob("*.pub")):
            if credentials.load_supernode_public_key(other).public_numbers() == auth_public.public_numbers():
                raise DeployError(f"this SuperNode key is already registered for owner {other.stem}")
    if not known_ledger.exists():
        save_public_key(ledger_public, known_ledger)
        made.files.append(known_ledger)
    if not known_auth.exists():
        credentials.write_public(known_auth, (auth_line + "\n").encode())
        made.files.append(known_auth)
    if endorsement is not None:
        if not where.app_endorsements.is_dir():
            raise DeployError(f"{where.path} has no {where.app_endorsements.name}/: it was made with --unsigned-apps")
        credentials.write_public(where.app_endorsement(owner_id), endorsement.to_json().encode(), overwrite=True)
        made.files.append(where.app_endorsement(owner_id))
    made.notes.append(f"{owner_id}: ledger key {fingerprint(ledger_public)[:16]}...; register its SuperNode with "
                      f"{where.script(names.REGISTER_SUPERNODES)} {owner_id} once the SuperLink runs")
    return made


def _check_registry(where: CoordinatorFolder, owner_id: str, key) -> None:
    if not where.registry.exists():
        return
    from privfl.privacy.ledger.registry import CoordinatorRegistry

    registry = CoordinatorRegistry.open_readonly(where.registry)
    try:
        known = registry.owner_key(owner_id)
    finally:
        registry.close()
    if known is not None and fingerprint(known) != fingerprint(key):
        raise DeployError(f"the coordinator's registry already holds another ledger key for {owner_id}; it refuses a "
                          "new one (see 'Key rotation' in docs/deployment.md)")


# -- both sides on one disk ------------------------------------------------------------


def init_deployment(folder: str | Path, owners: str | Sequence[str], *, options: CoordinatorOptions | None = None,
                    policy: PolicyDefaults | None = None, first_supernode_port: int = names.FIRST_SUPERNODE_PORT
                    ) -> Created:
    """A whole deployment in ``folder``: coordinator/, institutions/<owner>/ for each owner, README.md."""
    owner_ids = parse_owner_ids(owners)
    options = options or CoordinatorOptions()
    policy = policy or PolicyDefaults(purpose=options.purpose)
    options = dataclasses.replace(options, min_owners=len(owner_ids))
    s = options.settings()
    ports = [first_supernode_port + i for i in range(len(owner_ids))]
    for port in ports:
        check_port(port, "SuperNode port")
    clash = {options.port, s.registry_port} & set(ports)
    if clash:
        raise DeployError(f"the SuperNodes' local ports {ports[0]}..{ports[-1]} include the SuperLink's or the app "
                          f"registry's port {sorted(clash)}; choose another --port")
    # refuse a bad budget/delta/purpose before anything is written
    institution_policy(owner_ids[0], policy, federation=superlink_address(options.host, options.port))
    root = DeploymentFolder(Path(folder).resolve())
    created = _fresh_folder(root.path, "deployment")
    try:
        made = Created(root.path)
        coordinator = create_coordinator(root.coordinator.path, options)
        made.notes += coordinator.notes
        _mkdir(root.path / names.INSTITUTIONS, 0o755)
        superlink = superlink_address(options.host, options.port)
        institution_texts: dict[str, str] = {}
        for owner_id, port in zip(owner_ids, ports):
            where = root.institution(owner_id)
            create_institution(where.path, owner_id, superlink=superlink, supernode_port=port,
                               ca_cert=root.coordinator.ca_cert, signed_apps=s.signed_apps, policy=policy)
            add_owner(root.coordinator.path, owner_id, ledger_key=where.signing_public_key,
                      supernode_key=where.supernode_public_key,
                      app_endorsement=where.app_endorsement if s.signed_apps else None)
            if not institution_texts:
                institution_texts = {name: where.script(name).read_text() for name in (names.START_SUPERNODE,
                                                                                        names.REPORT)}
        _write_text(root.readme, scripts.deployment_readme(owner_ids, s, coordinator_scripts(s), institution_texts))
        made.files = sorted(p for p in root.path.rglob("*") if p.is_file())
        return made
    except BaseException:
        _undo(root.path, created)
        raise


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


__all__ = [
    "CoordinatorOptions",
    "Created",
    "ExperimentDefaults",
    "PolicyDefaults",
    "add_owner",
    "create_coordinator",
    "create_institution",
    "init_deployment",
    "parse_owner_ids",
    "server_hosts",
]
