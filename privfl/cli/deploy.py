"""``privfl deploy``: set up a federation of institutions on Flower's SuperLink and SuperNodes."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from privfl.cli import argtypes

_INIT_EPILOG = """\
example (every part on one disk, for a demonstration or a test):
  privfl deploy init federation/ --owners st-mary,st-john,city-lab --purpose "sepsis risk model"
  cat federation/README.md        # the exact commands, in order

The folder then holds coordinator/ (the coordinator's part: SuperLink TLS, its Ed25519
key, the owners' registered public keys and app endorsements, flwr's connection,
experiment.toml and start scripts) and institutions/<owner>/ (each institution's part:
its policy, ledger key, SuperNode key, the CA certificate, its own app-trust key (the
only key its SuperNode trusts) and its start scripts; none of the other institutions'
secrets). In a real deployment each institution runs
`privfl deploy institution` on its own premises and sends only its public keys, which
the coordinator registers with `privfl deploy add-owner`. See docs/deployment.md.
"""

_INSTITUTION_EPILOG = """\
example (at the institution):
  privfl deploy institution /srv/privfl/st-mary --owner st-mary --superlink fl.example.org:9092 \\
      --ca-cert ca.pem --purpose "sepsis risk model"
  # then send signing.pub, supernode-auth.pub and app-endorsement.json (never a .key file) to the coordinator
"""

_ENDORSE_EPILOG = """\
example (at the institution, after upgrading privfl):
  privfl deploy endorse-app /srv/privfl/st-mary
  # then send the new app-endorsement.json to the coordinator (privfl deploy add-owner ... --app-endorsement)
"""

_ADD_OWNER_EPILOG = """\
example (at the coordinator, with the public keys st-mary sent):
  privfl deploy add-owner federation/coordinator --owner st-mary \\
      --ledger-key st-mary-signing.pub --supernode-key st-mary-supernode-auth.pub \\
      --app-endorsement st-mary-app-endorsement.json
  federation/coordinator/register-supernodes.sh st-mary     # once the SuperLink runs
"""

_REGISTRY_EPILOG = """\
example (what coordinator/start-app-registry.sh runs):
  privfl app export coordinator/app
  privfl deploy app-registry coordinator/app --signing-key coordinator/app-signing.key \\
      --endorsements coordinator/app-endorsements --port 9093
  # then: FLWR_SUPERGRID_API_URL=http://127.0.0.1:9093/v1 flower-superlink ...
  #       flwr run @privfl/privfl-app==<privfl version> privfl-deployment --run-config experiment.toml

Why: Flower 1.42 verifies an app's signature (SuperNode --trusted-entities) only for apps
the SuperLink fetched from Flower Hub (FLWR_SUPERGRID_API_URL, POST /hub/fetch-fab).
This serves that endpoint for privfl's one app with each institution's endorsement (its
own signature on the bundle it built; its SuperNode trusts nothing else), on loopback
only; it runs until stopped (Ctrl-C or SIGTERM).
"""


def _fill(text: str) -> str:
    return textwrap.fill(text, width=88)


def _policy_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the institutions' policy files (each institution edits its own)")
    group.add_argument("--purpose", default=None, help="the purpose the owners allow (allowed-purposes) and the run "
                       "declares (default: 'federated model training')")
    group.add_argument("--epsilon-budget", type=argtypes.positive_float, default=8.0,
                       help="lifetime epsilon budget of each owner's data (default: 8.0)")
    group.add_argument("--delta", type=argtypes.positive_float, default=1e-5,
                       help="delta of each owner's guarantee; well below 1/records (default: 1e-5)")
    group.add_argument("--min-noise-multiplier", type=argtypes.non_negative_float, default=1.0,
                       help="the least DP-SGD noise multiplier each owner accepts (default: 1.0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "deploy", help="set up a federation of institutions (SuperLink + SuperNodes, TLS, keys, policies)",
        description=_fill(
            "A deployed federation: the coordinator runs Flower's SuperLink and privfl's ServerApp; each "
            "institution runs a SuperNode next to its data, with its own policy, ledger and keys. These commands "
            "write the folders, keys, certificates, policies and start scripts (docs/deployment.md)."),
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = sub.add_parser(
        "init", help="a whole deployment folder: coordinator/ and institutions/<owner>/ (demo or test)",
        description=_fill("Create a deployment folder: a CA and the SuperLink's TLS certificate, one SuperNode key and "
        "one ledger key per institution (public halves registered at the coordinator), the coordinator's key, the "
        "app-signing key, each institution's app-trust key and endorsement of privfl's bundle, each institution's policy, flwr's connection, experiment.toml, "
        "and the start scripts with a README.md of the exact commands."),
        epilog=_INIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("folder", type=Path, metavar="DIR", help="the deployment folder (new, or empty)")
    init.add_argument("--owners", required=True, metavar="A,B,C", help="the institutions' owner ids, comma-separated")
    init.add_argument("--host", default="127.0.0.1",
                      help="the SuperLink's host name or IP as the institutions dial it; its certificate names it "
                      "(a loopback host adds localhost, 127.0.0.1 and ::1) (default: 127.0.0.1)")
    init.add_argument("--port", type=argtypes.tcp_port, default=9092, help="the SuperLink's port, the only one the institutions "
                      "must reach (default: 9092)")
    init.add_argument("--bind", help="the address the SuperLink listens on (default: --host)")
    init.add_argument("--registry-port", type=argtypes.tcp_port, help="the app registry's loopback port (default: --port + 1)")
    init.add_argument("--supernode-ports-from", type=argtypes.tcp_port, default=9101, metavar="PORT",
                      help="the SuperNodes' local ports, one per institution from PORT (default: 9101)")
    init.add_argument("--unsigned-apps", action="store_true",
                      help="no app signing: the SuperNodes run any app the SuperLink hands them (not recommended)")
    init.add_argument("--demo-data", action="store_true",
                      help="to try the deployment on one machine: write a disjoint share of scikit-learn's digits into "
                           "each institution's data/ (train.npz, evaluation.npz); needs the default 64 features and "
                           "10 classes. Without it, each institution puts its own data there (docs/data.md)")
    exp = init.add_argument_group("the experiment (coordinator/experiment.toml)")
    exp.add_argument("--experiment", default="deployment", help="the experiment's name (default: deployment)")
    exp.add_argument("--num-features", type=argtypes.positive_int, default=64,
                     help="model inputs: the institutions' feature columns (default: 64, the digits template)")
    exp.add_argument("--num-classes", type=argtypes.positive_int, default=10,
                     help="classes of the label column (default: 10, the digits template)")
    exp.add_argument("--model", default="logreg", help="mlp | cnn | logreg (default: logreg)")
    exp.add_argument("--num-rounds", type=argtypes.positive_int, default=3, help="federated rounds (default: 3)")
    exp.add_argument("--noise-multiplier", type=argtypes.positive_float, default=2.3, help="DP-SGD noise (default: 2.3)")
    _policy_options(init)
    init.set_defaults(handler=run_init)

    inst = sub.add_parser(
        "institution", help="one institution's folder alone (run it on the institution's premises)",
        description=_fill("Create one institution's folder: its ledger signing key, its SuperNode key, its policy file "
        "and its start scripts, and its app-trust key: the only key its SuperNode trusts, which signs privfl's app "
        "bundle as this installation builds it (app-endorsement.json). Send the coordinator only signing.pub, "
        "supernode-auth.pub and app-endorsement.json."),
        epilog=_INSTITUTION_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    inst.add_argument("folder", type=Path, metavar="DIR", help="the institution's folder (new, or empty)")
    inst.add_argument("--owner", required=True, help="this institution's owner id")
    inst.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink")
    inst.add_argument("--supernode-port", type=argtypes.tcp_port, default=9094,
                      help="this SuperNode's local port (Flower's Runtime API on 127.0.0.1; default: 9094)")
    inst.add_argument("--ca-cert", type=Path, help="the federation CA certificate the coordinator sent (copied to "
                      "ca.pem; or copy it there later)")
    inst.add_argument("--unsigned-apps", action="store_true",
                      help="start the SuperNode without --trusted-entities: it then runs any app the SuperLink "
                      "hands it, code included (not recommended)")
    _policy_options(inst)
    inst.set_defaults(handler=run_institution)

    add = sub.add_parser(
        "add-owner", help="register an institution's public keys at the coordinator",
        description=_fill("Register the public keys an institution sent: its ledger key (owner-keys/<owner>.pub: every "
        "receipt is verified against it) and its SuperNode key (supernode-keys/<owner>.pub: register-supernodes.sh "
        "hands it to the SuperLink). The same keys again are accepted; another ledger key for a known owner is "
        "refused."), epilog=_ADD_OWNER_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("coordinator", type=Path, metavar="COORDINATOR_DIR", help="the coordinator's folder")
    add.add_argument("--owner", required=True, help="the institution's owner id")
    add.add_argument("--ledger-key", type=Path, required=True, help="its signing.pub (Ed25519, PEM)")
    add.add_argument("--supernode-key", type=Path, required=True, help="its supernode-auth.pub (OpenSSH ECDSA)")
    add.add_argument("--app-endorsement", type=Path, help="its app-endorsement.json (signed apps: without it its "
                     "SuperNode refuses every run); given again after an upgrade, it replaces the old one")
    add.set_defaults(handler=run_add_owner)

    endorse = sub.add_parser(
        "endorse-app", help="sign privfl's app bundle as the installed privfl builds it (at an institution)",
        description=_fill("Build privfl's code-free app bundle from the installed privfl and sign its hash with this "
        "institution's app-trust key, rewriting app-endorsement.json. Its SuperNode runs that bundle only: do this "
        "after upgrading privfl, and send the new file to the coordinator."),
        epilog=_ENDORSE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    endorse.add_argument("folder", type=Path, metavar="DIR", help="the institution's folder")
    endorse.set_defaults(handler=run_endorse_app)

    reg = sub.add_parser(
        "app-registry", help="serve privfl's signed Flower app to the SuperLink (loopback; signed apps)",
        description=_fill("Build the Flower app in APP_DIR (privfl app export) with Flower's builder, sign it with the "
        "Ed25519 app-signing key and serve it the way Flower Hub does, so that SuperNodes started with "
        "--trusted-entities accept it."), epilog=_REGISTRY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    reg.add_argument("app", type=Path, metavar="APP_DIR", help="the folder `privfl app export` wrote")
    reg.add_argument("--signing-key", type=Path, required=True, help="the app-signing key (OpenSSH Ed25519)")
    reg.add_argument("--endorsements", type=Path, help="the institutions' endorsements (<owner>.json) to serve with "
                     "the bundle; an institution's SuperNode runs it only with its own")
    reg.add_argument("--host", default="127.0.0.1", help="loopback address to listen on (default: 127.0.0.1)")
    reg.add_argument("--port", type=argtypes.tcp_port, default=9093, help="port to listen on (default: 9093)")
    reg.set_defaults(handler=run_app_registry)


def _usage(err: Exception):
    from privfl.cli import UsageError

    return UsageError(str(err))


def _policy(args: argparse.Namespace, purpose: str):
    from privfl.deploy.create import PolicyDefaults

    return PolicyDefaults(purpose=purpose, epsilon_budget=args.epsilon_budget, delta=args.delta,
                          min_noise_multiplier=args.min_noise_multiplier)


def run_init(args: argparse.Namespace) -> int:
    from privfl.deploy import DeployError
    from privfl.deploy.create import CoordinatorOptions, ExperimentDefaults, init_deployment
    from privfl.deploy.demo_data import DEMO_CLASSES, DEMO_FEATURES, write_digits_data
    from privfl.deploy.layout import DEFAULT_PURPOSE, DeploymentFolder

    purpose = args.purpose or DEFAULT_PURPOSE
    if args.demo_data and (args.num_features, args.num_classes) != (DEMO_FEATURES, DEMO_CLASSES):
        raise _usage(ValueError(f"--demo-data writes digits ({DEMO_FEATURES} features, {DEMO_CLASSES} classes); it "
                                f"cannot serve --num-features {args.num_features} --num-classes {args.num_classes}"))
    options = CoordinatorOptions(
        host=args.host, port=args.port, bind=args.bind, registry_port=args.registry_port,
        signed_apps=not args.unsigned_apps, purpose=purpose,
        experiment=ExperimentDefaults(experiment=args.experiment, num_features=args.num_features,
                                      num_classes=args.num_classes, model=args.model, num_rounds=args.num_rounds,
                                      noise_multiplier=args.noise_multiplier))
    try:
        made = init_deployment(args.folder, args.owners, options=options, policy=_policy(args, purpose),
                               first_supernode_port=args.supernode_ports_from)
    except DeployError as err:
        raise _usage(err) from None
    institutions = sorted(p.name for p in (made.root / "institutions").iterdir())
    print(f"privfl deploy: wrote a deployment of {len(institutions)} institutions ({', '.join(institutions)}) in "
          f"{made.root} ({len(made.files)} files)")
    if args.demo_data:
        where = DeploymentFolder(made.root)
        rows = write_digits_data({owner: where.institution(owner) for owner in institutions})
        print(f"  demo data:    digits in institutions/<owner>/data/ ({', '.join(f'{o} {n}' for o, n in rows.items())} "
              "training records)")
    print(f"  coordinator:  {made.root / 'coordinator'}")
    print(f"  institutions: {made.root / 'institutions'}/<owner>  (hand each institution its own folder only)")
    print(f"  commands:     {made.root / 'README.md'}")
    return 0


def run_institution(args: argparse.Namespace) -> int:
    from privfl.deploy import DeployError
    from privfl.deploy.create import create_institution
    from privfl.deploy.layout import DEFAULT_PURPOSE

    try:
        made = create_institution(args.folder, args.owner, superlink=args.superlink,
                                  supernode_port=args.supernode_port, ca_cert=args.ca_cert,
                                  signed_apps=not args.unsigned_apps,
                                  policy=_policy(args, args.purpose or DEFAULT_PURPOSE))
    except DeployError as err:
        raise _usage(err) from None
    print(f"privfl deploy: wrote institution {args.owner}'s folder {made.root}")
    endorsement = " and app-endorsement.json" if not args.unsigned_apps else ""
    print(f"  send the coordinator: {made.root / 'signing.pub'}, {made.root / 'supernode-auth.pub'}{endorsement} "
          "(never a .key file)")
    for note in made.notes:
        print(f"  {note}")
    print(f"  then: {made.root / 'start-supernode.sh'}   (see {made.root / 'README.md'})")
    return 0


def run_add_owner(args: argparse.Namespace) -> int:
    from privfl.deploy import DeployError
    from privfl.deploy.create import add_owner

    try:
        made = add_owner(args.coordinator, args.owner, ledger_key=args.ledger_key, supernode_key=args.supernode_key,
                         app_endorsement=args.app_endorsement)
    except DeployError as err:
        raise _usage(err) from None
    for path in made.files:
        print(f"wrote {path}")
    for note in made.notes:
        print(note)
    return 0


def run_endorse_app(args: argparse.Namespace) -> int:
    from privfl.app_bundle import build_fab
    from privfl.deploy import DeployError
    from privfl.deploy.endorsement import load_endorsement, write_endorsement
    from privfl.deploy.layout import InstitutionFolder
    from privfl.privacy.keys import KeyFileError

    where = InstitutionFolder(args.folder.resolve())
    if not where.app_trust_key.is_file():
        raise _usage(ValueError(f"{where.app_trust_key} is missing: {args.folder} is not an institution folder made "
                                "with signed apps (privfl deploy institution)"))
    try:
        owner = load_endorsement(where.app_endorsement).owner_id  # the owner id it was made for
        made = write_endorsement(build_fab(), where.app_trust_key, where.app_endorsement, owner, overwrite=True)
    except (DeployError, KeyFileError, FileNotFoundError) as err:
        raise _usage(err) from None
    print(f"wrote {where.app_endorsement}: {made.app} (sha256 {made.fab_sha256}) signed by {made.key_id}")
    print("  send it to the coordinator: privfl deploy add-owner COORDINATOR_DIR --owner "
          f"{owner} ... --app-endorsement app-endorsement.json")
    return 0


def run_app_registry(args: argparse.Namespace) -> int:
    from privfl.deploy import DeployError
    from privfl.deploy.credentials import load_app_signing_key
    from privfl.deploy.registry import AppRegistry, build_app_fab, sign_app, with_endorsements

    if not (args.app / "pyproject.toml").is_file():
        raise FileNotFoundError(f"{args.app}/pyproject.toml is missing: write the app first with "
                                f"`privfl app export {args.app}`")
    try:
        app = sign_app(build_app_fab(args.app), load_app_signing_key(args.signing_key))
        log = lambda line: print(f"app-registry: {line}", flush=True)  # noqa: E731
        if args.endorsements is not None:
            app = with_endorsements(app, args.endorsements, log=log)  # refuse a bad folder before serving
        server = AppRegistry(app, args.host, args.port, log=log, endorsements=args.endorsements)
    except (DeployError, ValueError) as err:  # ValueError: a KeyFileError (an app-signing key others can read)
        raise _usage(err) from None
    except OSError as err:
        raise _usage(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    endorsed = ", ".join(e.owner_id for e in app.endorsements) or "no institution"
    print(f"privfl deploy app-registry: serving {app.spec} (FAB sha256 {app.fab_hash}, signed by {app.key_id}; "
          f"endorsed by {endorsed}) at {server.api_url}", flush=True)
    print(f"  start the SuperLink with FLWR_SUPERGRID_API_URL={server.api_url}; submit runs with "
          f"flwr run {app.spec} <connection>", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("app-registry: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
