"""What `palisade.connect` and `palisade.aio.connect` share: the server address, TLS and the
bearer token, resolved the way the Rust SDK (`palisade_proto::client`) and the CLI resolve them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from .errors import ConnectError

#: A CA certificate, a client certificate or key: PEM bytes (or text), or a path to a PEM file.
Pem = bytes | str | os.PathLike[str]

#: The CLI's default server.
DEFAULT_SERVER = "http://127.0.0.1:50051"


@dataclass(frozen=True)
class Settings:
    """A resolved connection: the gRPC target and, for TLS, the channel credentials."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: Sequence[tuple[str, Any]]


def read_pem(what: str, value: Pem) -> bytes:
    """The PEM bytes of `value`: bytes and text holding a PEM block are taken as they are,
    any other text or path names a file."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as error:
        raise ConnectError(f"cannot read the {what} {os.fspath(value)!r}: {error.strerror}") from error


def resolve(
    server: str | None,
    ca_cert: Pem | None,
    token: str | None,
    client_cert: Pem | None,
    client_key: Pem | None,
    options: Sequence[tuple[str, Any]],
) -> Settings:
    """Resolves `connect`'s arguments; `None` falls back to the CLI's environment variables
    (PALISADE_SERVER, PALISADE_CA_CERT, PALISADE_TOKEN)."""
    server = server if server is not None else os.environ.get("PALISADE_SERVER", DEFAULT_SERVER)
    if ca_cert is None and os.environ.get("PALISADE_CA_CERT"):
        ca_cert = os.environ["PALISADE_CA_CERT"]
    ambient_token = token is None
    if token is None:
        token = os.environ.get("PALISADE_TOKEN")
    token = token.strip() if token else None

    # As the Rust SDK: `host:port` means https:// when a CA is given, http:// otherwise.
    url = server if "://" in server else f"{'https' if ca_cert is not None else 'http'}://{server}"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise ConnectError(f"invalid server address {server!r}: {error}") from error
    if parts.scheme not in ("http", "https") or not host or parts.path not in ("", "/") or parts.query:
        raise ConnectError(
            f"invalid server address {server!r}: expected https://HOST:PORT, http://HOST:PORT or HOST:PORT"
        )
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    if (client_cert is None) != (client_key is None):
        raise ConnectError("a client certificate needs its key, and a key its certificate")
    if parts.scheme == "http":
        # Never sent in the clear (a --dev server ignores tokens anyway): a token from
        # PALISADE_TOKEN is left out, one given explicitly is a mistake worth saying.
        if token and not ambient_token:
            raise ConnectError("a token needs an https:// server: over http:// it would travel in the clear")
        if client_cert is not None:
            raise ConnectError("a client certificate needs an https:// server")
        return Settings(target, None, options)

    if ca_cert is None:
        raise ConnectError("an https:// server needs the CA its certificate chains to (ca_cert, PALISADE_CA_CERT)")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem("CA certificate", ca_cert),
        private_key=read_pem("client key", client_key) if client_key is not None else None,
        certificate_chain=read_pem("client certificate", client_cert) if client_cert is not None else None,
    )
    if token:
        if not all(" " <= c <= "~" for c in token):
            raise ConnectError("the token has characters a header cannot carry")
        # `authorization: Bearer TOKEN` on every call, exactly what server/src/auth.rs reads.
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return Settings(target, credentials, options)


#: How long each of several replicas may take to accept a connection before the next is tried.
CONNECT_TIMEOUT = 5.0


def replicas(server: str | Sequence[str] | None) -> list[str]:
    """The replicas `server` names: a sequence, or one string with commas between addresses
    (as the CLI's ``--server`` and PALISADE_SERVER take them); ``None``: PALISADE_SERVER,
    which may name several too, else the CLI's default."""
    if server is None:
        server = os.environ.get("PALISADE_SERVER", DEFAULT_SERVER)
    names = server.split(",") if isinstance(server, str) else list(server)
    found = [n.strip() for n in names if n.strip()]
    if not found:
        raise ConnectError(f"no server address in {server!r}")
    return found


def none_answered(servers: Sequence[str], timeout: float) -> ConnectError:
    """The error when no replica of `servers` accepted a connection within `timeout` s."""
    return ConnectError(f"no server replica accepted a connection within {timeout} s: {', '.join(servers)}")


def resolve_all(
    servers: Sequence[str],
    ca_cert: Pem | None,
    token: str | None,
    client_cert: Pem | None,
    client_key: Pem | None,
    options: Sequence[tuple[str, Any]],
) -> list[Settings]:
    """`resolve` for each replica; a list mixing TLS and plaintext replicas is refused (a
    token would go in the clear to whichever plaintext one answered)."""
    every = [resolve(s, ca_cert, token, client_cert, client_key, options) for s in servers]
    if len({s.credentials is None for s in every}) > 1:
        raise ConnectError(f"server replicas {', '.join(servers)} mix https:// and http://")
    return every
