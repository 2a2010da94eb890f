"""Nodes: listing page by page and reading one, with nodes registered by an AgentService
hello under their own certificates (the kernel test reads a real agent's status)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import grpc
import pytest

import palisade
from palisade.v1 import agent_pb2, node_pb2

from . import support


@contextmanager
def registered(server: support.Server, name: str, labels: dict[str, str]) -> Iterator[None]:
    """Holds a Sync stream open for node `name`, as an agent does, after its hello."""
    cert, key = server.issue_node(name)
    done = threading.Event()

    def requests() -> Iterator[agent_pb2.SyncRequest]:
        yield agent_pb2.SyncRequest(hello=agent_pb2.AgentHello(node_name=name, labels=labels, agent_version="pytest"))
        done.wait()

    with palisade.connect(server.address, ca_cert=server.ca, client_cert=cert, client_key=key) as agent:
        call = agent.agent.Sync(requests(), timeout=60)
        call.initial_metadata()  # the server stores the hello before it answers
        try:
            yield
        finally:
            done.set()
            call.cancel()


def test_list_nodes_follows_page_tokens_in_name_order(server: support.Server, client: palisade.Client) -> None:
    batch = support.unique("batch")
    names = sorted(support.unique(f"node{i}") for i in range(3))
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(registered(server, name, {"batch": batch}))
        first = client.nodes.ListNodes(
            node_pb2.ListNodesRequest(label_selector={"batch": batch}, page_size=2), timeout=10
        )
        assert len(first.nodes) == 2 and first.next_page_token, "the listing must really span pages"
        nodes = list(client.list_nodes(label_selector={"batch": batch}, page_size=2))
    assert [n.name for n in nodes] == names
    assert all(n.connected and n.agent_version == "pytest" and n.labels["batch"] == batch for n in nodes)


def test_get_node_never_registered_is_not_found(client: palisade.Client) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        client.nodes.GetNode(node_pb2.GetNodeRequest(name=support.unique("ghost")), timeout=10)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
