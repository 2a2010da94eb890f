"""The whole path through the SDK: a policy applied from YAML reaches a real palisade-agent,
the kernel denies a connect from a cgroup this test creates, and the decision comes back on
WatchEvents naming the policy and the rule. Root only (CI runs as root)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

import palisade
from palisade.v1 import event_pb2, node_pb2, policy_pb2

from . import support

# Runs in the child: joins the cgroup (argv[1] is its cgroup.procs), then connects to
# 127.0.0.1:argv[2] and prints "connected" or the errno's name.
CONNECT_FROM_CGROUP = """
import errno, os, socket, sys
with open(sys.argv[1], "w") as procs:
    procs.write(str(os.getpid()))
with socket.socket() as s:
    try:
        s.connect(("127.0.0.1", int(sys.argv[2])))
        print("connected")
    except OSError as e:
        print(errno.errorcode.get(e.errno, e.errno))
"""


@dataclass
class Node:
    name: str
    cgroup: str  # relative to the cgroup2 mount, as a policy's workload names it
    cgroup_dir: Path
    log: Path

    def connect_from_cgroup(self, port: int) -> tuple[int, str]:
        """A child process in the cgroup connects to 127.0.0.1:`port`: its pid and outcome."""
        child = subprocess.Popen(
            [sys.executable, "-c", CONNECT_FROM_CGROUP, self.cgroup_dir / "cgroup.procs", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        return child.pid, out.strip()


@pytest.fixture(scope="module")
def node(server: support.Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A palisade-agent with its node certificate, enforcing at a cgroup made for it (and
    nowhere else on this machine)."""
    support.require_root("the kernel test")
    workdir = tmp_path_factory.mktemp("agent")
    name = support.unique("pytest-node")
    cert, key = server.issue_node(name)
    cgroup = "/" + support.unique("palisade-pytest")
    cgroup_dir = support.cgroup2_mount() / cgroup.lstrip("/")
    pins = Path("/sys/fs/bpf") / support.unique("palisade-pytest")
    log = workdir / "agent.log"
    cgroup_dir.mkdir()
    try:
        with log.open("wb") as sink:
            agent = subprocess.Popen(
                [
                    support.binary("palisade-agent"),
                    "--server", server.address,
                    "--ca-cert", server.ca,
                    "--cert", cert,
                    "--key", key,
                    "--node-name", name,
                    "--labels", f"run={name}",
                    "--bundle-public-key", server.bundle_public_key,
                    "--attach-cgroup", cgroup,
                    "--bpffs", pins,
                    "--state-dir", workdir / "state",
                ],
                stdout=sink,
                stderr=sink,
                env=support.process_env(PALISADE_LOG="info"),
            )  # fmt: skip
        try:
            yield Node(name, cgroup, cgroup_dir, log)
        finally:
            support.stop(agent)
    finally:
        shutil.rmtree(pins, ignore_errors=True)  # removing the pins detaches the programs
        cgroup_dir.rmdir()


def listener() -> socket.socket:
    """A TCP listener on loopback, so that an allowed connect to it succeeds and a denied one
    can only fail by the policy (the kernel picks the port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def enforcing(client: palisade.Client, node: Node) -> node_pb2.Node | None:
    """The node once it has acknowledged the bundle of the current policy set (None until
    then): its applied digest is what CompilePolicy says the node should receive now."""
    try:
        current = client.nodes.GetNode(node_pb2.GetNodeRequest(name=node.name), timeout=10).node
        wanted = client.policies.CompilePolicy(policy_pb2.CompilePolicyRequest(node_name=node.name), timeout=30)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.NOT_FOUND:  # no hello yet
            return None
        raise
    if current.last_error.message:
        pytest.fail(f"{node.name} rejected generation {current.last_error.generation}: {current.last_error.message}")
    return current if current.applied_digest == wanted.digest else None


def test_denied_connect_in_cgroup_arrives_on_watch_naming_policy_and_rule(client: palisade.Client, node: Node) -> None:
    with listener() as denied, listener() as allowed:
        denied_port, allowed_port = denied.getsockname()[1], allowed.getsockname()[1]
        # Before the policy, the port is open from the cgroup: the EPERM below is the policy's.
        assert node.connect_from_cgroup(denied_port)[1] == "connected"

        name = support.unique("kernel-deny")
        applied = client.apply(f"""\
name: {name}
labels: {{suite: pytest}}
node_selector:
  match_labels: {{run: {node.name}}}
workload:
  cgroup: {node.cgroup}
network:
  connect:
    rules:
      - id: block-test-port
        action: deny
        cidrs: [127.0.0.1/32]
        ports: [{denied_port}]
        protocols: [tcp]
""")
        assert applied.created
        status = support.eventually(
            lambda: enforcing(client, node),
            timeout=60,
            what=f"{node.name} to enforce {name}",
            details=lambda: support.tail(node.log),
        )
        assert status.applied_generation == status.desired_generation > 0
        assert status.connected

        with client.watch_events(policy=name, timeout=60) as watch:
            pid, outcome = node.connect_from_cgroup(denied_port)
            assert outcome == "EPERM"
            assert node.connect_from_cgroup(allowed_port)[1] == "connected"
            event = next(watch)

    assert (event.policy, event.revision, event.rule_id) == (name, applied.policy.revision, "block-test-port")
    assert event.verdict == event_pb2.VERDICT_DENY
    assert (event.node, event.pid) == (node.name, pid)
    assert (event.address, event.port, event.protocol) == ("127.0.0.1", denied_port, policy_pb2.PROTOCOL_TCP)
    assert event.bundle_digest == status.applied_digest
    assert event.id in [e.id for e in client.list_events(policy=name, node=node.name)]
    assert node.name in [n.name for n in client.list_nodes(label_selector={"run": node.name})]
