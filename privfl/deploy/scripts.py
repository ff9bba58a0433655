"""The start scripts and READMEs ``privfl deploy`` writes: the exact commands of a deployment.

Every script resolves its own folder at run time (``HERE``), so a folder can be handed
over and moved; what is baked in is what the deployment decided (the SuperLink's
address and port, a SuperNode's local port, the app version).  The long-running ones
end in ``exec``, so the process a service manager (or a test) starts *is* the Flower
process and stops with it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from privfl import __version__
from privfl.app_bundle import APP_NAME, PUBLISHER
from privfl.deploy import layout as names

SHEBANG = "#!/usr/bin/env bash"


def _prelude(what: str, usage: str = "") -> str:
    lines = [SHEBANG, f"# {what}",
             (f"# Written by `privfl deploy` (privfl {__version__}); run it in the Python environment where privfl "
              "is installed"),
             "# (it provides privfl, flwr, flower-superlink and flower-supernode)."]
    if usage:
        lines.append(f"# usage: {usage}")
    lines += ["set -euo pipefail", 'HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"',
              'export FLWR_HOME="$HERE/flwr-home"  # Flower state and connections stay in this folder',
              "export FLWR_DISABLE_UPDATE_CHECK=1"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CoordinatorSettings:
    host: str  # the SuperLink's name, as the institutions dial it (and its certificate names it)
    port: int
    bind: str  # the address the SuperLink listens on
    registry_port: int
    signed_apps: bool

    @property
    def app_spec(self) -> str:
        return f"@{PUBLISHER}/{APP_NAME}=={__version__}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}/v1"


def start_superlink(s: CoordinatorSettings) -> str:
    signed = (f"# Signed apps: the SuperLink fetches privfl's signed app from the app registry on this host\n"
              f"# ({names.START_APP_REGISTRY}); runs are submitted as {s.app_spec}.\n"
              f"export FLWR_SUPERGRID_API_URL={shlex.quote(s.registry_url)}\n") if s.signed_apps else ""
    return (_prelude("Start the SuperLink: TLS, SuperNode authentication, the installed environment (no `uv sync`).")
            + signed + 'mkdir -p "$HERE/superlink"\nchmod 700 "$HERE/superlink"\ncd "$HERE"\n'
            + _superexec_secret('"$HERE/superlink/superexec.secret"')
            + "# The SuperExec that runs the ServerApps: started here, authenticated to the Runtime API by the secret, and\n"
            "# stopped with the SuperLink (--parent-pid: this shell's PID, which `exec` hands to flower-superlink).\n"
            "flower-superexec \\\n"
            f"    --runtime-api-address {shlex.quote(_address(s.host, s.port))} \\\n"
            '    --root-certificates "$HERE/tls/ca.pem" \\\n'
            '    --superexec-auth-secret-file "$HERE/superlink/superexec.secret" \\\n'
            '    --parent-pid $$ &\n'
            "exec flower-superlink \\\n"
            f"    --host {shlex.quote(s.bind)} --port {s.port} \\\n"
            '    --ssl-certfile "$HERE/tls/superlink.pem" \\\n'
            '    --ssl-keyfile "$HERE/tls/superlink.key" \\\n'
            '    --ssl-ca-certfile "$HERE/tls/ca.pem" \\\n'
            "    --enable-supernode-auth \\\n"
            "    --disable-runtime-dependency-installation \\\n"
            "    --isolation process \\\n"
            '    --superexec-auth-secret-file "$HERE/superlink/superexec.secret" \\\n'
            '    --database "$HERE/superlink/state.db" \\\n'
            '    --log-file "$HERE/superlink/superlink.log"\n')


def _superexec_secret(path: str) -> str:
    """Lines that make the SuperExec's shared secret once (32 random bytes, mode 0600).

    Why: under ``--isolation subprocess`` Flower 1.42 turns SuperExec authentication off, so
    anyone who reaches the Runtime API can take a run's ServerApp or ClientApp task and its
    token.  Under ``--isolation process`` with this secret, only a SuperExec that holds it
    (HMAC-signed AcquireTask) gets a task.
    """
    return ("# The shared secret of this host's SuperExec and Flower process (a task goes only to its holder).\n"
            f"[ -s {path} ] || (umask 077 && head -c 32 /dev/urandom > {path})\n"
            f"chmod 600 {path}\n")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def start_app_registry(s: CoordinatorSettings) -> str:
    return (_prelude("Export privfl's Flower app and serve it to the SuperLink (loopback only) with each institution's "
                     "endorsement (app-endorsements/): an institution's SuperNode runs it only if it is the very "
                     "bundle that institution built and signed.")
            + 'privfl app export "$HERE/app"\n'
            'exec privfl deploy app-registry "$HERE/app" --signing-key "$HERE/app-signing.key" \\\n'
            '    --endorsements "$HERE/app-endorsements" \\\n'
            f"    --host 127.0.0.1 --port {s.registry_port}\n")


def register_supernodes() -> str:
    return (_prelude("Register institutions' SuperNode public keys (supernode-keys/<owner>.pub) with the running "
                     "SuperLink.", "register-supernodes.sh [OWNER...]   (default: every key in supernode-keys/)")
            + "shopt -s nullglob\n"
            'owners=("$@")\n'
            'if [ ${#owners[@]} -eq 0 ]; then\n'
            '    for key in "$HERE"/supernode-keys/*.pub; do owners+=("$(basename "$key" .pub)"); done\n'
            "fi\n"
            "status=0\n"
            'for owner in "${owners[@]}"; do\n'
            f'    flwr supernode register "$HERE/supernode-keys/$owner.pub" {names.CONNECTION} || {{\n'
            '        echo "register-supernodes: $owner was not registered (already registered? see above)" >&2\n'
            "        status=1\n"
            "    }\n"
            "done\n"
            'exit "$status"\n')


def submit_run(s: CoordinatorSettings) -> str:
    usage = "submit-run.sh [RUN_CONFIG.toml] [flwr run options, e.g. --format json]   (default: experiment.toml)"
    head = _prelude("Submit a run to the SuperLink. Each run needs its own run-dir: copy experiment.toml, change "
                    "experiment and run-dir.", usage)
    body = 'CONFIG="${1:-$HERE/experiment.toml}"\nshift || true\n'
    if s.signed_apps:
        return head + body + (f"# The SuperLink fetches the signed app from the app registry; a locally built app "
                              f"would be refused by\n# every SuperNode (--trusted-entities).\n"
                              f'exec flwr run {shlex.quote(s.app_spec)} {names.CONNECTION} --run-config "$CONFIG" "$@"\n')
    return head + body + ('privfl app export "$HERE/app"\n'
                          f'exec flwr run "$HERE/app" {names.CONNECTION} --run-config "$CONFIG" "$@"\n')


def coordinator_report() -> str:
    return (_prelude("The coordinator's report of one run: its federation ledger, verified against the owners' "
                     "registered keys and the registry.", "report.sh RUN_DIR [OUT.html]")
            + 'RUN_DIR="${1:?usage: report.sh RUN_DIR [OUT.html]}"\n'
            'exec privfl report "$RUN_DIR" --out "${2:-$RUN_DIR/report.html}"\n')


def start_supernode(superlink: str, port: int, signed_apps: bool) -> str:
    trust = '    --trusted-entities "$HERE/trusted-entities.yaml" \\\n' if signed_apps else ""
    check = ('[ -f "$HERE/trusted-entities.yaml" ] || { echo "trusted-entities.yaml is missing: privfl deploy '
             'institution writes it (this institution\'s own app-trust key, the only one its SuperNode trusts)" >&2; '
             'exit 2; }\n') if signed_apps else ""
    return (_prelude("Start this institution's SuperNode: it trusts only ca.pem for the SuperLink, authenticates "
                     "with supernode-auth.key, runs only signed apps and enforces policy.toml.")
            + '[ -f "$HERE/ca.pem" ] || { echo "ca.pem is missing: copy the federation CA certificate the '
            'coordinator sent" >&2; exit 2; }\n'
            + check + 'cd "$HERE"\n'
            + _superexec_secret('"$HERE/superexec.secret"')
            + "# The SuperExec that runs the ClientApps: started here, authenticated to the SuperNode's local Runtime API\n"
            "# by the secret, and stopped with the SuperNode (--parent-pid: this shell's PID, kept by `exec`).\n"
            "flower-superexec \\\n"
            f"    --runtime-api-address 127.0.0.1:{port} --insecure \\\n"
            '    --superexec-auth-secret-file "$HERE/superexec.secret" \\\n'
            '    --parent-pid $$ &\n'
            "exec flower-supernode \\\n"
            f"    --superlink {shlex.quote(superlink)} \\\n"
            '    --root-certificates "$HERE/ca.pem" \\\n'
            '    --auth-supernode-private-key "$HERE/supernode-auth.key" \\\n'
            + trust +
            '    --node-config "policy=\\"$HERE/policy.toml\\"" \\\n'
            "    --isolation process \\\n"
            '    --superexec-auth-secret-file "$HERE/superexec.secret" \\\n'
            "    --host 127.0.0.1 \\\n"
            f"    --port {port}\n")


def institution_report() -> str:
    return (_prelude("This institution's own privacy report, from its own ledger verified against its own key.",
                     "report.sh [OUT.html]")
            + 'exec privfl report "$HERE/ledger.db" --public-key "$HERE/signing.pub" --out "${1:-$HERE/report.html}"\n')


def _script_block(text: str) -> str:
    """A script's commands without its prelude, for a README."""
    body = [line for line in text.splitlines() if not line.startswith(("#", "set -euo", "HERE=", "export FLWR_HOME",
                                                                       "export FLWR_DISABLE"))]
    return "\n".join(body).strip()


def institution_readme(owner_id: str, superlink: str, signed_apps: bool) -> str:
    trusted = ("- `app-trust.key` (secret) / `app-trust.pub`, `trusted-entities.yaml`, `app-endorsement.json`: your\n"
               "  SuperNode trusts only your own `app-trust` key, which signed privfl's app bundle as your installed\n"
               "  privfl builds it (`app-endorsement.json`): it runs that bundle and refuses any other, whoever\n"
               "  signed it. After upgrading privfl, sign the new bundle: `privfl deploy endorse-app .`\n"
               if signed_apps else "")
    return f"""# privfl institution folder: {owner_id}

This folder is everything institution `{owner_id}` needs to take part in the federation
coordinated at `{superlink}`. It holds this institution's secrets and no one else's:
keep it on the machine that holds the data, readable only by the account that runs the
SuperNode (the folder is mode 0700, the keys and policy 0600).

- `policy.toml`: your privacy policy (budget, delta, least noise, purposes, ...). Your
  SuperNode enforces it whatever the coordinator asks. Read the comments in it, then
  check it: `privfl policy check policy.toml`.
- `signing.key` (secret) / `signing.pub`: signs your privacy ledger (`ledger.db`).
- `supernode-auth.key` (secret) / `supernode-auth.pub`: authenticates your SuperNode.
- `ca.pem`: the federation's CA certificate (from the coordinator): the only root your
  SuperNode trusts for the SuperLink.
{trusted}- `superexec.secret` (secret, made by `{names.START_SUPERNODE}` on first start): the SuperNode gives
  ClientApp tasks only to the SuperExec holding it (Flower's `--isolation process`); never copy it.
- `data/`: put your data here: `data/train.npz` (training) and `data/evaluation.npz`
  (held-out, for evaluation requests); CSV or Parquet work too (change the names in
  `policy.toml`). Schema: docs/data.md; check with `privfl data check data/train.npz`.

## Steps

1. Send the coordinator your two public keys, `signing.pub` and `supernode-auth.pub`{", and `app-endorsement.json`" if signed_apps else ""}
   (never a `.key` file). It registers them:
   `privfl deploy add-owner COORDINATOR_DIR --owner {owner_id} --ledger-key signing.pub --supernode-key supernode-auth.pub{" --app-endorsement app-endorsement.json" if signed_apps else ""}`
   and `register-supernodes.sh {owner_id}`.
2. Put `ca.pem` from the coordinator in this folder.
3. Start the SuperNode (it only dials out to the SuperLink; its own port is local):

```bash
./{names.START_SUPERNODE}
```

which runs:

```bash
{_script_block(start_supernode(superlink, 0, signed_apps)).replace("--port 0", "--port <this SuperNode's local port>").replace("127.0.0.1:0 ", "127.0.0.1:<this SuperNode's local port> ")}
```

4. Your own report, from your own ledger, at any time:

```bash
./{names.REPORT}            # privfl report ledger.db --public-key signing.pub --out report.html
```

Back up `ledger.db` (it is the record of your data's lifetime privacy spend) and
`signing.key`. Never restore an older copy of the ledger: the coordinator anchored its
head, and so did your node (`signing.key.ledger-head`): your SuperNode would then refuse
every round. Your SuperNode never creates a ledger: a moved or lost `ledger.db` stops it
until the policy names the real one, or until you rebuild it from the coordinators'
copies with `privfl ledger recover` (docs/ledger.md).
"""


def deployment_readme(owners: list[str], s: CoordinatorSettings, coordinator_script: dict[str, str],
                      institution_scripts: dict[str, str]) -> str:
    first = owners[0]
    endorsement_sent = " and its signature on privfl's app bundle (`app-endorsement.json`)" if s.signed_apps else ""
    endorsement_flag = " --app-endorsement app-endorsement.json" if s.signed_apps else ""
    owners_text = ", ".join(f"`{o}`" for o in owners)
    registry_step = (f"""
# 1. the app registry: exports privfl's Flower app, signs it, serves it on loopback
coordinator/{names.START_APP_REGISTRY}
""" if s.signed_apps else "")
    registry_cmd = (f"\n### {names.START_APP_REGISTRY}\n\n```bash\n{_script_block(coordinator_script[names.START_APP_REGISTRY])}\n```\n"
                    if s.signed_apps else "")
    signed_note = (f"""
## Signed apps

Each SuperNode trusts one key (`--trusted-entities trusted-entities.yaml`): its own
institution's `app-trust` key, which signed privfl's app bundle as that institution built
it from its installed privfl (`app-endorsement.json`, sent to the coordinator and kept in
`coordinator/app-endorsements/`). So a SuperNode runs that code-free bundle and refuses
any other, whoever signed it: the coordinator cannot ship code to an institution. Flower
verifies signatures only on apps the SuperLink fetched from a hub, so the coordinator
runs its own (`privfl deploy app-registry`, loopback only), which serves the bundle with
the institutions' endorsements, and the SuperLink is pointed at it with
`FLWR_SUPERGRID_API_URL`; runs are submitted as `{s.app_spec}`. A locally built app
(`flwr run coordinator/app ...`) is refused by every SuperNode ("The FAB could not be
verified").
""" if s.signed_apps else "")
    return f"""# privfl deployment

A federation of {len(owners)} institutions ({owners_text}) coordinated by one SuperLink at
`{s.host}:{s.port}` (TLS with the CA in `coordinator/tls/`, SuperNode authentication{", signed apps" if s.signed_apps else ""}).
Made by `privfl deploy init` with every part on one disk, for a demonstration or a test.

**In a real deployment each institution generates its own keys on its own premises** with
`privfl deploy institution DIR --owner NAME --superlink {s.host}:{s.port}` and sends the
coordinator only its two public keys (`signing.pub`, `supernode-auth.pub`){endorsement_sent}; the coordinator
registers them with `privfl deploy add-owner coordinator --owner NAME --ledger-key signing.pub --supernode-key
supernode-auth.pub{endorsement_flag}` and sends back `coordinator/tls/ca.pem`.
Hand each institution its own `institutions/<owner>/` folder and nothing else; the
coordinator keeps `coordinator/`. Folders holding secrets are mode 0700, private keys 0600.
Move `coordinator/tls/ca.key` offline once the SuperLink has its certificate.

## Order of commands

```bash
# --- on the coordinator's host ---{registry_step}
# 2. the SuperLink (its port {s.port} is the only one the institutions must reach)
coordinator/{names.START_SUPERLINK}
# 3. register the institutions' SuperNode keys (once; the SuperLink's database keeps them)
coordinator/{names.REGISTER_SUPERNODES}

# --- at each institution (here: {first}) ---
institutions/{first}/{names.START_SUPERNODE}

# --- on the coordinator's host: a run, its log, its report ---
coordinator/{names.SUBMIT_RUN}                       # experiment.toml; another run: submit-run.sh other.toml
FLWR_HOME=coordinator/flwr-home flwr log RUN_ID {names.CONNECTION} --show
coordinator/{names.REPORT} coordinator/runs/<experiment>   # the coordinator's report of a run

# --- at each institution: its own report from its own ledger ---
institutions/{first}/{names.REPORT}
```

Who can take a task: the SuperLink and every SuperNode run with Flower's `--isolation process`
and give a task (the ServerApp's at the SuperLink, the ClientApp's at a SuperNode) only to the
SuperExec their start script launched with the host's `superexec.secret` (32 random bytes, 0600,
made on first start); a SuperNode's own Runtime API listens on 127.0.0.1 only. Flower 1.42 still
passes each running task's token on the app process's command line: keep other users off these
hosts (or mount `/proc` with `hidepid=2`). See docs/deployment.md, "Who can take a task".

Each run needs its own `run-dir` (copy `coordinator/experiment.toml`, change
`experiment` and `run-dir`): the ServerApp refuses to reuse a folder that holds a run.
The `flwr` connection `{names.CONNECTION}` lives in `coordinator/flwr-home/config.toml`,
which names `coordinator/tls/ca.pem` by its absolute path (as do `coordinator-dir` and
`run-dir` in `experiment.toml`): if you move the folder, edit those three paths.

## What each script runs
{registry_cmd}
### {names.START_SUPERLINK}

```bash
{_script_block(coordinator_script[names.START_SUPERLINK])}
```

### {names.REGISTER_SUPERNODES}

```bash
{_script_block(coordinator_script[names.REGISTER_SUPERNODES])}
```

### {names.SUBMIT_RUN}

```bash
{_script_block(coordinator_script[names.SUBMIT_RUN])}
```

### {names.REPORT} (coordinator)

```bash
{_script_block(coordinator_script[names.REPORT])}
```

### institutions/{first}/{names.START_SUPERNODE}

```bash
{_script_block(institution_scripts[names.START_SUPERNODE])}
```

### institutions/{first}/{names.REPORT}

```bash
{_script_block(institution_scripts[names.REPORT])}
```
{signed_note}
See docs/deployment.md in privfl's sources for ports, firewalls, keys and their
rotation, and what the coordinator can and cannot see.
"""
