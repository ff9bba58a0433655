"""A signed app for an offline federation: privfl's own stand-in for Flower Hub's fetch-fab endpoint.

Flower 1.42 verifies an app's signature only for apps the SuperLink fetched from Flower
Hub: ``flwr run @publisher/app==x.y.z`` makes the SuperLink ``POST
{FLWR_SUPERGRID_API_URL}/hub/fetch-fab`` (``FLWR_SUPERGRID_API_URL`` is read from the
SuperLink's environment, default ``https://api.flower.ai/v1``), download the FAB from the
``fab_url`` of the answer and keep the answer's ``verifications`` with it.  A SuperNode
started with ``--trusted-entities`` runs a FAB only if one of those verifications is a
valid Ed25519 signature, by a key it trusts, over ``signed_at`` (8 bytes big-endian)
followed by the FAB's sha256 (:func:`flwr.supercore.primitives.asymmetric_ed25519.create_message_to_sign`).
A FAB submitted from a local folder carries no verifications, so such a SuperNode
refuses it ("The FAB could not be verified").

A federation that cannot reach Flower Hub (or does not want to publish there) runs
:class:`AppRegistry` next to its SuperLink: a small HTTP server on loopback that knows
one app, privfl's bundle (:mod:`privfl.app_bundle`, built with Flower's own builder),
signed with the coordinator's app-signing key, which no SuperNode trusts, and served with
the institutions' endorsements of that very bundle (:mod:`privfl.deploy.endorsement`):
each SuperNode trusts only its own institution's key, so the signature that makes it run
the bundle is the institution's, over the bundle it built itself.  The SuperLink is
started with ``FLWR_SUPERGRID_API_URL=http://127.0.0.1:PORT/v1`` and runs are submitted as
``flwr run @privfl/privfl-app==<privfl version> <connection>``.

The server is deliberately small: one thread, a 10 s socket timeout, request bodies of
at most 4 KiB, two routes (``POST /v1/hub/fetch-fab`` and ``GET /v1/fabs/<sha256>.fab``),
loopback addresses only.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from privfl.deploy.credentials import app_key_id
from privfl.deploy.endorsement import load_endorsement
from privfl.deploy.endorsement import message_to_sign as message_for_hash
from privfl.deploy.errors import DeployError

API_PREFIX = "/v1"
FETCH_PATH = f"{API_PREFIX}/hub/fetch-fab"
FAB_PATH = re.compile(rf"^{API_PREFIX}/fabs/([0-9a-f]{{64}})\.fab$")
MAX_BODY = 4096
VERSION = re.compile(r"^\d+\.\d+\.\d+$")  # Flower's APP_VERSION_PATTERN


def message_to_sign(fab: bytes, signed_at: int) -> bytes:
    """What Flower's SuperNode verifies: signed_at (8 bytes big-endian) + sha256(FAB)."""
    return message_for_hash(hashlib.sha256(fab).hexdigest(), signed_at)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class SignedApp:
    app_id: str  # "@publisher/name", as `flwr run` names a Hub app
    version: str
    fab: bytes
    key_id: str
    signature: str  # base64url, no padding
    signed_at: int  # unix seconds
    endorsements: tuple = ()  # the institutions' Endorsements of this very FAB (privfl.deploy.endorsement)

    @property
    def fab_hash(self) -> str:
        return hashlib.sha256(self.fab).hexdigest()

    @property
    def spec(self) -> str:
        """What to pass to ``flwr run``."""
        return f"{self.app_id}=={self.version}"

    def verifications(self) -> list[dict[str, Any]]:
        """The coordinator's own signature (trusted by no SuperNode) and every institution's endorsement of this FAB."""
        own = [{"public_key_id": self.key_id, "signature": self.signature, "signed_at": self.signed_at}]
        return own + [e.verification() for e in self.endorsements if e.fab_sha256 == self.fab_hash]


def build_app_fab(app_dir: str | Path) -> bytes:
    """The FAB of the app folder, built by Flower's own builder (deterministic: fixed zip dates)."""
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(Path(app_dir).resolve())


def fab_identity(fab: bytes) -> tuple[str, str]:
    """(app id '@publisher/name', version) read from the FAB's pyproject.toml, as the SuperLink reads it."""
    from flwr.common.config import get_fab_config, get_metadata_from_config

    fab_id, version = get_metadata_from_config(get_fab_config(fab))
    return f"@{fab_id}", version


def sign_app(fab: bytes, key: ed25519.Ed25519PrivateKey, *, signed_at: int | None = None) -> SignedApp:
    app_id, version = fab_identity(fab)
    if not VERSION.match(version):
        raise DeployError(f"the app's version {version!r} is not x.y.z (digits only), which Flower requires of an "
                          "app fetched by name; install a released privfl to run signed apps")
    signed_at = int(time.time()) if signed_at is None else signed_at
    signature = key.sign(message_to_sign(fab, signed_at))
    return SignedApp(app_id, version, fab, app_key_id(key.public_key()), _b64url(signature), signed_at)


def with_endorsements(app: SignedApp, folder: str | Path, log=print) -> SignedApp:
    """``app`` with the endorsements in ``folder`` (``<owner>.json``) that sign this very FAB.

    An endorsement of another FAB (the institution runs another privfl version) is left
    out and said: that institution's SuperNode will refuse the run until both sides run the
    same privfl.  A file that does not verify is refused outright.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DeployError(f"--endorsements {folder}: no such folder (privfl deploy add-owner --app-endorsement "
                          "fills it)")
    kept = []
    for path in sorted(folder.glob("*.json")):
        endorsement = load_endorsement(path)
        if endorsement.fab_sha256 == app.fab_hash:
            kept.append(endorsement)
        else:
            log(f"{path.name}: {endorsement.owner_id} endorsed {endorsement.app} (sha256 "
                f"{endorsement.fab_sha256[:16]}...), not the bundle served here ({app.spec}, sha256 "
                f"{app.fab_hash[:16]}...): its SuperNode will refuse runs until both run the same privfl")
    return dataclasses.replace(app, endorsements=tuple(kept))


def verify_app(fab: bytes, verifications: list[dict[str, Any]], trusted: dict[str, ed25519.Ed25519PublicKey]) -> bool:
    """Flower's SuperNode check (``_verify_fab``), for tests and for ``privfl deploy app-registry --check``."""
    for item in verifications:
        key = trusted.get(str(item.get("public_key_id")))
        if key is None:
            continue
        signature = str(item.get("signature", ""))
        try:
            key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                       message_to_sign(fab, int(item["signed_at"])))
        except (InvalidSignature, ValueError, KeyError, TypeError):
            continue
        return True
    return False


def _check_loopback(host: str) -> str:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise DeployError(f"the app registry serves on loopback only (got --host {host}): the SuperLink that fetches "
                          "from it runs on the same host")
    return host


class AppRegistry(HTTPServer):
    """Serves one signed app the way Flower Hub's fetch-fab endpoint does."""

    def __init__(self, app: SignedApp, host: str = "127.0.0.1", port: int = 0, *, log=None,
                 endorsements: str | Path | None = None) -> None:
        self.app = app
        self.log = log or (lambda line: None)
        self.endorsements = None if endorsements is None else Path(endorsements)
        super().__init__((_check_loopback(host), port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def api_url(self) -> str:
        """The value of FLWR_SUPERGRID_API_URL for the SuperLink."""
        host = self.server_address[0]
        return f"http://{host}:{self.port}{API_PREFIX}"

    def fab_url(self) -> str:
        return f"{self.api_url}/fabs/{self.app.fab_hash}.fab"

    def current_app(self) -> SignedApp:
        """The app with the endorsements in the folder now: an institution registered later is served too."""
        if self.endorsements is None:
            return self.app
        return with_endorsements(self.app, self.endorsements, log=self.log)


class _Handler(BaseHTTPRequestHandler):
    server: AppRegistry
    timeout = 10  # seconds per socket operation: a stalled client cannot hold the one thread
    server_version = "privfl-app-registry"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._reply(status, json.dumps(value).encode())

    def do_POST(self) -> None:
        if self.path != FETCH_PATH:
            self._json(404, {"detail": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._json(400, {"detail": f"a fetch-fab request has a JSON body of 1..{MAX_BODY} bytes"})
            return
        try:
            request = json.loads(self.rfile.read(length))
            app_id, version = request["app_id"], request.get("app_version")
        except (ValueError, KeyError, TypeError):
            self._json(400, {"detail": "the body is not {\"app_id\": ..., \"app_version\": ...}"})
            return
        try:
            app = self.server.current_app()
        except DeployError as err:  # a corrupt endorsement file: say so, serve nothing rather than guess
            self.server.log(f"refused to serve: {err}")
            self._json(500, {"detail": "the app registry's endorsements cannot be read; see its log"})
            return
        if app_id != app.app_id or version not in (None, app.version):
            self.server.log(f"refused a request for {app_id}=={version}: this registry serves {app.spec} only")
            self._json(404, {"detail": {"available_app_versions": [app.version] if app_id == app.app_id else []}})
            return
        endorsed = ", ".join(e.owner_id for e in app.endorsements) or "no institution"
        self.server.log(f"served {app.spec} (sha256 {app.fab_hash[:16]}..., signed by {app.key_id}, endorsed by "
                        f"{endorsed})")
        self._json(200, {"fab_url": self.server.fab_url(), "verifications": app.verifications()})

    def do_GET(self) -> None:
        match = FAB_PATH.match(self.path)
        if not match or match.group(1) != self.server.app.fab_hash:
            self._json(404, {"detail": "not found"})
            return
        self._reply(200, self.server.app.fab, "application/octet-stream")
