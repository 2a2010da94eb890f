"""The blocking client: a channel with TLS and the bearer token, the generated stubs on it,
and helpers for what the stubs leave to every caller (documents, pages, a live watch)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import grpc

from . import _connection, _requests
from ._connection import Pem
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
    connect_timeout: float = _connection.CONNECT_TIMEOUT,
) -> Client:
    """Connects to a Palisade server, like the CLI.

    `server` is ``https://HOST:PORT``, ``http://HOST:PORT`` (a ``--dev`` server) or
    ``HOST:PORT`` (https when a CA is given). `ca_cert` is the CA the server's certificate
    chains to: PEM bytes, or a path; required for https. `token` is sent as
    ``authorization: Bearer TOKEN`` on every call (surrounding whitespace ignored; never over
    http, where it would travel in the clear: refused when given, left out when it comes from
    PALISADE_TOKEN). `client_cert` and `client_key` are a
    node's certificate, which only AgentService needs. Arguments left ``None`` come from
    PALISADE_SERVER (default ``http://127.0.0.1:50051``), PALISADE_CA_CERT and PALISADE_TOKEN.
    `options` are gRPC channel options.

    Several server replicas (a sequence, or addresses separated by commas) are tried in
    order: a refused connection moves on at once, a silent one after `connect_timeout`
    seconds, and the first that accepts a connection is used; `palisade.ConnectError` when
    none does or when they mix https and http. With one server the channel connects
    lazily: an unreachable server shows as UNAVAILABLE on the first call, or use
    `wait_ready`. Raises `palisade.ConnectError` for arguments that cannot work.
    """
    servers = _connection.replicas(server)
    every = _connection.resolve_all(servers, ca_cert, token, client_cert, client_key, options)
    if len(every) == 1:
        return Client(_channel(every[0]))
    for settings in every:
        channel = _channel(settings)
        if _answers(channel, connect_timeout):
            return Client(channel)
        channel.close()
    raise _connection.none_answered(servers, connect_timeout)


def _answers(channel: grpc.Channel, timeout: float) -> bool:
    """Whether `channel` connects within `timeout` s; a refused connection (the channel's
    first TRANSIENT_FAILURE) answers at once rather than after the timeout."""
    settled = threading.Event()
    ready = False

    def watch(state: grpc.ChannelConnectivity) -> None:
        nonlocal ready
        if state is grpc.ChannelConnectivity.READY:
            ready = True
            settled.set()
        elif state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(watch)
    return ready


def _channel(settings: _connection.Settings) -> grpc.Channel:
    if settings.credentials is None:
        return grpc.insecure_channel(settings.target, options=settings.options)
    return grpc.secure_channel(settings.target, settings.credentials, options=settings.options)


class Client:
    """A connection to a Palisade server.

    The generated stubs are attributes (`policies`, `events`, `flows`, `captures`, `nodes`,
    `tokens`,
    `agent`):
    every RPC is available on them with the messages of `palisade.v1`, and every call carries
    the token. Close the client (or use it as a context manager) to release the channel.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        """Wraps an existing channel (its credentials are the caller's business)."""
        self.channel = channel
        self.policies = policy_pb2_grpc.PolicyServiceStub(channel)
        self.events = event_pb2_grpc.EventServiceStub(channel)
        self.flows = flow_pb2_grpc.FlowServiceStub(channel)
        self.captures = capture_pb2_grpc.CaptureServiceStub(channel)
        self.nodes = node_pb2_grpc.NodeServiceStub(channel)
        self.tokens = token_pb2_grpc.TokenServiceStub(channel)
        self.agent = agent_pb2_grpc.AgentServiceStub(channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self.channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Waits until the channel is connected; `grpc.FutureTimeoutError` after `timeout` s."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def apply(
        self,
        document: str | bytes,
        *,
        dry_run: bool = False,
        expected_revision: int | None = None,
        timeout: float | None = None,
    ) -> policy_pb2.ApplyPolicyResponse:
        """Applies one policy written as YAML or JSON (docs/policy-reference.md).

        An invalid document raises `grpc.RpcError` with INVALID_ARGUMENT;
        `palisade.field_violations(error)` lists each problem with its field path.
        `expected_revision` makes the apply conditional (0: create only)."""
        return self.policies.ApplyPolicy(_requests.apply(document, dry_run, expected_revision), timeout=timeout)

    def apply_all(
        self,
        documents: Sequence[str | bytes],
        *,
        dry_run: bool = False,
        expected_revision: int | None = None,
        timeout: float | None = None,
    ) -> policy_pb2.ApplyPoliciesResponse:
        """Applies several policies (a directory, a GitOps sync) in one transaction and one
        policy generation: all or nothing. Field paths in errors start `policies[i].`."""
        request = _requests.apply_all(documents, dry_run, expected_revision)
        return self.policies.ApplyPolicies(request, timeout=timeout)

    def list_policies(
        self,
        *,
        label_selector: Mapping[str, str] | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[policy_pb2.StoredPolicy]:
        """Every live policy whose labels contain `label_selector`, by name, fetched
        `page_size` at a time (0: the server's default) as the iteration goes on."""
        request = _requests.list_policies(label_selector, page_size)
        return _pages(self.policies.ListPolicies, request, "policies", timeout)

    def list_nodes(
        self,
        *,
        label_selector: Mapping[str, str] | None = None,
        page_size: int = 0,
        timeout: float | None = None,
    ) -> Iterator[node_pb2.Node]:
        """Every node whose labels contain `label_selector`, by name, page by page."""
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
    ) -> Iterator[event_pb2.DecisionEvent]:
        """Stored events matching the filter (empty values do not filter), newest first, page
        by page; `since`/`until` bound the kernel time (naive datetimes are UTC)."""
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
    ) -> Iterator[flow_pb2.FlowAggregate]:
        """Stored flow aggregates (`connections.observe`, docs/policy-semantics.md §13.9)
        matching the filter, newest first, page by page. `peer` is a CIDR or one address;
        `port` matches the local or the peer port; `since`/`until` bound the windows."""
        request = flow_pb2.ListFlowsRequest(
            filter=_requests.flow_filter(node, policy, rule_id, cgroup_id, peer, port, since, until),
            page_size=page_size,
        )
        return _pages(self.flows.ListFlows, request, "flows", timeout)

    def top_flows(
        self,
        *,
        node: str = "",
        policy: str = "",
        peer: str = "",
        since: datetime | None = None,
        limit: int = 0,
        timeout: float | None = None,
    ) -> list[flow_pb2.FlowAggregate]:
        """The top talkers: aggregates summed per key since `since` (default: the last hour),
        most bytes first, at most `limit` (0: 10)."""
        request = flow_pb2.TopFlowsRequest(
            filter=_requests.flow_filter(node=node, policy=policy, peer=peer, since=since), limit=limit
        )
        return list(self.flows.TopFlows(request, timeout=timeout).talkers)

    def watch_events(
        self,
        *,
        node: str = "",
        policy: str = "",
        verdict: event_pb2.Verdict | str = event_pb2.VERDICT_UNSPECIFIED,
        timeout: float | None = None,
    ) -> EventWatch:
        """Starts a live stream of the events stored from now on that match the filter.

        Returns once the server has subscribed, so an event stored after this returns is
        delivered (the server subscribes before it answers). `timeout` bounds the whole
        stream (then DEADLINE_EXCEEDED). Iterate the result; `cancel()` or leaving its `with`
        block ends the iteration."""
        request = event_pb2.WatchEventsRequest(filter=_requests.event_filter(node, policy, verdict))
        # A grpc.Call, a grpc.Future and, once failed, its own grpc.RpcError.
        call: Any = self.events.WatchEvents(request, timeout=timeout)
        call.initial_metadata()  # blocks until the server answered (or the call failed)
        if call.done() and call.code() is not grpc.StatusCode.OK:
            raise call
        return EventWatch(call)


def _pages(method: Any, request: Any, field: str, timeout: float | None) -> Iterator[Any]:
    """The items in `field` of every page `method` returns, asking for the next page (by
    `next_page_token`) only when the previous one is used up."""
    while True:
        page = method(request, timeout=timeout)
        yield from getattr(page, field)
        if not page.next_page_token:
            return
        request.page_token = _requests.next_token(request.page_token, page.next_page_token)


class EventWatch(Iterator[event_pb2.DecisionEvent]):
    """A live event stream from `Client.watch_events`: an iterator of DecisionEvent that
    raises `grpc.RpcError` if the stream fails and stops when cancelled or when the server
    closes it (shutdown)."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> EventWatch:
        return self

    def __next__(self) -> event_pb2.DecisionEvent:
        try:
            event: event_pb2.DecisionEvent = next(self._call)
        except grpc.RpcError as error:
            if self._cancelled and error.code() is grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise
        return event

    def cancel(self) -> None:
        """Ends the stream; the iteration stops."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> EventWatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.cancel()
