"""The asyncio client (`grpc.aio`): the same connection, stubs and helpers as
`palisade.Client`, with coroutines and async iterators.

    async with palisade.aio.connect("https://127.0.0.1:50051", ca_cert="pki/ca.crt", token=t) as client:
        await client.apply(Path("policy.yaml").read_text())
        async for policy in client.list_policies():
            ...

Create and use it inside one running event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from . import _connection, _requests
from ._connection import Pem
from .errors import ConnectError
from .v1 import (
    agent_pb2_grpc,
    capture_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    flow_pb2,
    flow_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    token_pb2_grpc,
)


def connect(
    server: str | Sequence[str] | None = None,
    *,
    ca_cert: Pem | None = None,
    token: str | None = None,
    client_cert: Pem | None = None,
    client_key: Pem | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> AsyncClient:
    """As `palisade.connect` with one server, returning an `AsyncClient` on a `grpc.aio`
    channel. For several replicas use `connect_any`, which waits for one to answer."""
    servers = _connection.replicas(server)
    if len(servers) > 1:
        raise ConnectError("several servers: use `await palisade.aio.connect_any(...)`, which picks one that answers")
    return AsyncClient(_channel(_connection.resolve(servers[0], ca_cert, token, client_cert, client_key, options)))


async def connect_any(
    server: str | Sequence[str] | None = None,
    *,
    ca_cert: Pem | None = None,
    token: str | None = None,
    client_cert: Pem | None = None,
    client_key: Pem | None = None,
    options: Sequence[tuple[str, Any]] = (),
    connect_timeout: float = _connection.CONNECT_TIMEOUT,
) -> AsyncClient:
    """As `palisade.connect` with several replicas: tries them in order, each for up to
    `connect_timeout` seconds, and returns a client of the first that accepts a connection;
    `palisade.ConnectError` when none does."""
    servers = _connection.replicas(server)
    every = _connection.resolve_all(servers, ca_cert, token, client_cert, client_key, options)
    for settings in every:
        channel = _channel(settings)
        try:
            if await asyncio.wait_for(_answers(channel), connect_timeout):
                return AsyncClient(channel)
        except asyncio.TimeoutError:  # not yet the builtin on Python 3.10
            pass
        await channel.close()
    raise _connection.none_answered(servers, connect_timeout)


async def _answers(channel: grpc.aio.Channel) -> bool:
    """Whether `channel` connects: True once READY, False at its first TRANSIENT_FAILURE (a
    refused connection), so a replica that is down costs no timeout."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return False
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return True


def _channel(settings: _connection.Settings) -> grpc.aio.Channel:
    if settings.credentials is None:
        return grpc.aio.insecure_channel(settings.target, options=settings.options)
    return grpc.aio.secure_channel(settings.target, settings.credentials, options=settings.options)


class AsyncClient:
    """A `grpc.aio` connection to a Palisade server; see `palisade.Client`. The stub
    attributes return awaitables (and async iterators for streams)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        """Wraps an existing `grpc.aio` channel."""
        self.channel = channel
        self.policies = policy_pb2_grpc.PolicyServiceStub(channel)
        self.events = event_pb2_grpc.EventServiceStub(channel)
        self.flows = flow_pb2_grpc.FlowServiceStub(channel)
        self.captures = capture_pb2_grpc.CaptureServiceStub(channel)
        self.nodes = node_pb2_grpc.NodeServiceStub(channel)
        self.tokens = token_pb2_grpc.TokenServiceStub(channel)
        self.agent = agent_pb2_grpc.AgentServiceStub(channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self.channel.close()

    async def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; `asyncio.TimeoutError` after `timeout` s."""
        await asyncio.wait_for(self.channel.channel_ready(), timeout)

    async def apply(
        self,
        document: str | bytes,
        *,
        dry_run: bool = False,
        expected_revision: int | None = None,
        timeout: float | None = None,
    ) -> policy_pb2.ApplyPolicyResponse:
        """As `palisade.Client.apply`; raises `grpc.aio.AioRpcError`."""
        request = _requests.apply(document, dry_run, expected_revision)
        response: policy_pb2.ApplyPolicyResponse = await self.policies.ApplyPolicy(request, timeout=timeout)
        return response

    async def apply_all(
        self,
        documents: Sequence[str | bytes],
        *,
        dry_run: bool = False,
        expected_revision: int | None = None,
        timeout: float | None = None,
    ) -> policy_pb2.ApplyPoliciesResponse:
        """As `palisade.Client.apply_all`; raises `grpc.aio.AioRpcError`."""
        request = _requests.apply_all(documents, dry_run, expected_revision)
        response: policy_pb2.ApplyPoliciesResponse = await self.policies.ApplyPolicies(request, timeout=timeout)
        return response

    def list_policies(
        self,
        *,
        label_selector: Mapping[str, str] | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[policy_pb2.StoredPolicy]:
        """As `palisade.Client.list_policies`, as an async iterator."""
        request = _requests.list_policies(label_selector, page_size)
        return _pages(self.policies.ListPolicies, request, "policies", timeout)

    def list_nodes(
        self,
        *,
        label_selector: Mapping[str, str] | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[node_pb2.Node]:
        """As `palisade.Client.list_nodes`, as an async iterator."""
        request = _requests.list_nodes(label_selector, page_size)
        return _pages(self.nodes.ListNodes, request, "nodes", timeout)

    def list_events(
        self,
        *,
        node: str = "",
        policy: str = "",
        verdict: event_pb2.Verdict | str = event_pb2.VERDICT_UNSPECIFIED,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[event_pb2.DecisionEvent]:
        """As `palisade.Client.list_events`, as an async iterator."""
        request = event_pb2.ListEventsRequest(
            filter=_requests.event_filter(node, policy, verdict, since, until), page_size=page_size
        )
        return _pages(self.events.ListEvents, request, "events", timeout)

    def list_flows(
        self,
        *,
        node: str = "",
        policy: str = "",
        rule_id: str = "",
        cgroup_id: int = 0,
        peer: str = "",
        port: int = 0,
        since: datetime | None = None,
        until: datetime | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[flow_pb2.FlowAggregate]:
        """As `palisade.Client.list_flows`, as an async iterator."""
        request = flow_pb2.ListFlowsRequest(
            filter=_requests.flow_filter(node, policy, rule_id, cgroup_id, peer, port, since, until),
            page_size=page_size,
        )
        return _pages(self.flows.ListFlows, request, "flows", timeout)

    async def top_flows(
        self,
        *,
        node: str = "",
        policy: str = "",
        peer: str = "",
        since: datetime | None = None,
        limit: int = 0,
        timeout: float | None = None,
    ) -> list[flow_pb2.FlowAggregate]:
        """As `palisade.Client.top_flows`."""
        request = flow_pb2.TopFlowsRequest(
            filter=_requests.flow_filter(node=node, policy=policy, peer=peer, since=since), limit=limit
        )
        response = await self.flows.TopFlows(request, timeout=timeout)
        return list(response.talkers)

    async def watch_events(
        self,
        *,
        node: str = "",
        policy: str = "",
        verdict: event_pb2.Verdict | str = event_pb2.VERDICT_UNSPECIFIED,
        timeout: float | None = None,
    ) -> AsyncEventWatch:
        """As `palisade.Client.watch_events`: returns once the server has subscribed."""
        request = event_pb2.WatchEventsRequest(filter=_requests.event_filter(node, policy, verdict))
        call = self.events.WatchEvents(request, timeout=timeout)
        await call.initial_metadata()  # the server answers once it has subscribed
        if call.done():
            await call.read()  # raises the error of a call that failed before answering
        return AsyncEventWatch(call)


async def _pages(method: Any, request: Any, field: str, timeout: float | None) -> AsyncIterator[Any]:
    """As `palisade.client._pages`, awaiting each page."""
    while True:
        page = await method(request, timeout=timeout)
        for item in getattr(page, field):
            yield item
        if not page.next_page_token:
            return
        request.page_token = _requests.next_token(request.page_token, page.next_page_token)


class AsyncEventWatch(AsyncIterator[event_pb2.DecisionEvent]):
    """A live event stream from `AsyncClient.watch_events`: an async iterator of
    DecisionEvent that raises `grpc.aio.AioRpcError` if the stream fails and stops when
    cancelled or when the server closes it. ``async with`` cancels it on exit."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __aiter__(self) -> AsyncEventWatch:
        return self

    async def __anext__(self) -> event_pb2.DecisionEvent:
        try:
            message = await self._call.read()
        except asyncio.CancelledError:
            # grpc.aio reports a cancelled call as a cancelled await; only ours ends quietly.
            if self._cancelled:
                raise StopAsyncIteration from None
            raise
        except grpc.aio.AioRpcError as error:
            if self._cancelled and error.code() is grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        event: event_pb2.DecisionEvent = message
        return event

    def cancel(self) -> None:
        """Ends the stream; the iteration stops."""
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> AsyncEventWatch:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()
