"""Test support: the one way these tests wait for a condition, and the real processes they
start (palisade-server, palisade-agent) with their PKI, tokens and database."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pytest

T = TypeVar("T")

SDK = Path(__file__).resolve().parent.parent
REPO = SDK.parent.parent


def eventually(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    details: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> T:
    """Polls `probe` until it returns something other than None (or False), then returns it;
    after `timeout` seconds fails the test naming `what`, with `details()` (e.g. a log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}" + (f"\n{details()}" if details else ""))
        time.sleep(interval)


def tail(log: Path, lines: int = 40) -> str:
    """The end of a process's log, for failure messages."""
    text = log.read_text(errors="replace").splitlines() if log.exists() else ["(no log)"]
    return f"--- last {lines} lines of {log} ---\n" + "\n".join(text[-lines:])


def unique(prefix: str) -> str:
    """A name no other run uses: prefix and 8 hex digits (valid as a policy or node name)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def bin_dir() -> Path:
    """Where palisade-server and palisade-agent are: PALISADE_BIN_DIR or target/debug."""
    return Path(os.environ.get("PALISADE_BIN_DIR", REPO / "target" / "debug"))


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it (cargo build) or set PALISADE_BIN_DIR")
    return path


def process_env(**extra: str) -> dict[str, str]:
    """The environment for a palisade binary: ours, less every PALISADE_* variable (flags
    have environment fallbacks, so a developer's PALISADE_DEV or PALISADE_SERVER would
    change what the test starts), plus `extra`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PALISADE_")} | extra


def psql(url: str, sql: str) -> None:
    subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, capture_output=True, text=True)


@contextmanager
def fresh_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the server `base_url` points at, dropped afterwards."""
    name = unique("palisade_pytest").replace("-", "_")
    psql(base_url, f"CREATE DATABASE {name}")
    try:
        yield urlsplit(base_url)._replace(path=f"/{name}").geturl()
    finally:
        psql(base_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def server_tool(*args: str | Path) -> str:
    """Runs `palisade-server ARGS` (pki, token) and returns its stdout."""
    return subprocess.run(
        [binary("palisade-server"), *args], check=True, capture_output=True, text=True, env=process_env()
    ).stdout


def token(database_url: str, role: str, name: str) -> str:
    """`palisade-server token create`: the secret is alone on the last line of stdout."""
    out = server_tool("token", "create", "--role", role, "--name", name, "--database-url", database_url)
    return out.strip().splitlines()[-1]


def stop(process: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Server:
    """A running palisade-server with TLS, node certificates and tokens required."""

    process: subprocess.Popen[bytes]
    address: str  # https://127.0.0.1:PORT
    pki: Path  # ca.crt, server.crt, and the node certificates issued for tests
    bundle_public_key: Path
    database_url: str
    log: Path

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    def issue_node(self, name: str) -> tuple[Path, Path]:
        """`palisade-server pki issue-node`: the node's certificate and key."""
        server_tool("pki", "issue-node", name, self.pki)
        return self.pki / f"{name}.crt", self.pki / f"{name}.key"


def serving_address(log: Path) -> str | None:
    """The address from the server's `serving gRPC` JSON log line, once it is written."""
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        fields = record.get("fields", {})
        if fields.get("message") == "serving gRPC":
            # The field is the Debug form of an Option<SocketAddr>: "Some(127.0.0.1:41234)".
            match = re.search(r"(\d+\.\d+\.\d+\.\d+:\d+)", str(fields.get("addr")))
            return match.group(1) if match else None
    return None


@contextmanager
def server(workdir: Path, database_url: str) -> Iterator[Server]:
    """Starts palisade-server on 127.0.0.1:0 (the kernel picks the port; the server logs it)
    with a fresh development PKI, and stops it afterwards."""
    pki = workdir / "pki"
    server_tool("pki", "init", pki)
    log = workdir / "server.log"
    key = workdir / "bundle.key"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                binary("palisade-server"),
                "--listen", "127.0.0.1:0",
                "--database-url", database_url,
                "--bundle-signing-key", key,
                "--tls-cert", pki / "server.crt",
                "--tls-key", pki / "server.key",
                "--client-ca", pki / "ca.crt",
                "--log-json",
            ],
            stdout=sink,
            stderr=sink,
            env=process_env(PALISADE_LOG="info"),
        )  # fmt: skip
    try:

        def started() -> str | None:
            if process.poll() is not None:
                pytest.fail(f"palisade-server exited with {process.returncode}:\n{tail(log)}")
            return serving_address(log)

        address = eventually(started, timeout=30, what="palisade-server to log its address")
        yield Server(process, f"https://{address}", pki, Path(f"{key}.pub"), database_url, log)
    finally:
        stop(process)


def require_root(what: str) -> None:
    """Skips (loudly) without root; under CI (CI=true, or any non-empty CI as in
    scripts/test.sh) fails instead: CI runs as root."""
    if os.geteuid() == 0:
        return
    message = f"{what} needs root (it loads eBPF programs and creates a cgroup)"
    if os.environ.get("CI"):  # as scripts/test.sh: any non-empty CI
        pytest.fail(f"{message}, and CI runs as root")
    pytest.skip(f"SKIPPED: {message}")


def cgroup2_mount() -> Path:
    """Where the cgroup v2 hierarchy is mounted (the mount point field of mountinfo)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[separator + 1] == "cgroup2":
            return Path(fields[4])
    pytest.fail("no cgroup2 mount in /proc/self/mountinfo")
