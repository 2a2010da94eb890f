"""Flows: aggregates a node reports through AgentService.ReportFlows, listed page by page,
filtered, and summed as top talkers (the kernel's own flows are in the Rust kernel tests)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

import palisade
import palisade.aio
from palisade.v1 import agent_pb2, flow_pb2

from . import support


def aggregate(policy: str, peer: str, peer_port: int, sent: int) -> flow_pb2.FlowAggregate:
    now = int(time.time())
    flow = flow_pb2.FlowAggregate(
        policy=policy,
        revision=1,
        rule_id="peers",
        cgroup_id=4242,
        direction=flow_pb2.FLOW_DIRECTION_OUTBOUND,
        local_address="10.0.0.1",
        peer_address=peer,
        peer_port=peer_port,
        connections=3,
        bytes_sent=sent,
        bytes_received=2 * sent,
        srtt_us_min=10,
        srtt_us_avg=20,
        srtt_us_max=30,
    )
    flow.window_start.FromSeconds(now - 10)
    flow.window_end.FromSeconds(now)
    return flow


def report(reporter: tuple[str, palisade.Client], flows: list[flow_pb2.FlowAggregate]) -> int:
    node, client = reporter
    request = agent_pb2.ReportFlowsRequest(node_name=node, aggregates=flows)
    response = client.agent.ReportFlows(iter([request]), timeout=10)
    return response.accepted


def test_list_flows_pages_filters_and_top_sums(client: palisade.Client, reporter: tuple[str, palisade.Client]) -> None:
    policy = support.unique("flows")
    flows = [aggregate(policy, f"10.1.0.{i}", 443, 100 * (i + 1)) for i in range(5)]
    flows.append(aggregate(policy, "2001:db8::1", 8443, 10_000))
    assert report(reporter, flows) == 6

    listed = list(client.list_flows(policy=policy, page_size=2))
    assert len(listed) == 6 and {f.node for f in listed} == {reporter[0]}
    ids = [f.id for f in listed]
    assert ids == sorted(ids, reverse=True), "newest first"
    v4 = list(client.list_flows(policy=policy, peer="10.1.0.0/24"))
    assert sorted(f.peer_address for f in v4) == [f"10.1.0.{i}" for i in range(5)]
    assert [f.peer_port for f in client.list_flows(policy=policy, port=8443)] == [8443]

    top = client.top_flows(policy=policy, limit=2)
    assert [(t.peer_address, t.bytes_sent) for t in top] == [("2001:db8::1", 10_000), ("10.1.0.4", 500)]
    assert top[0].srtt_us_avg == 20 and top[0].connections == 3


def test_a_bad_flow_filter_names_the_field(client: palisade.Client) -> None:
    with pytest.raises(grpc.RpcError) as error:
        list(client.list_flows(peer="10.0.0.1/8"))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in palisade.field_violations(error.value)] == ["filter.peer"]


def test_aio_lists_and_tops_flows(
    server: support.Server, tokens: dict[str, str], reporter: tuple[str, palisade.Client]
) -> None:
    policy = support.unique("aioflows")
    assert report(reporter, [aggregate(policy, "10.9.0.1", 80, 7), aggregate(policy, "10.9.0.2", 80, 70)]) == 2

    async def run() -> tuple[list[str], list[str]]:
        async with palisade.aio.connect(server.address, ca_cert=server.ca, token=tokens["viewer"]) as client:
            listed = [f.peer_address async for f in client.list_flows(policy=policy, page_size=1)]
            top = [t.peer_address for t in await client.top_flows(policy=policy)]
            return listed, top

    listed, top = asyncio.run(run())
    assert sorted(listed) == ["10.9.0.1", "10.9.0.2"]
    assert top == ["10.9.0.2", "10.9.0.1"], "most bytes first"
