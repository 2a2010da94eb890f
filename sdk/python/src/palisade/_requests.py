"""Requests the sync and the asyncio client both build, defined once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from .v1 import event_pb2, flow_pb2, node_pb2, policy_pb2


def apply(document: str | bytes, dry_run: bool, expected_revision: int | None) -> policy_pb2.ApplyPolicyRequest:
    """ApplyPolicy with a YAML or JSON `document` (one policy; the server parses it strictly)."""
    if isinstance(document, bytes):
        document = document.decode("utf-8")
    request = policy_pb2.ApplyPolicyRequest(document=document, dry_run=dry_run)
    if expected_revision is not None:
        request.expected_revision = expected_revision
    return request


def apply_all(
    documents: Sequence[str | bytes], dry_run: bool, expected_revision: int | None
) -> policy_pb2.ApplyPoliciesRequest:
    """ApplyPolicies with one YAML or JSON document per policy: one transaction, all or nothing."""
    entries = [apply(document, False, expected_revision) for document in documents]
    return policy_pb2.ApplyPoliciesRequest(policies=entries, dry_run=dry_run)


def list_policies(label_selector: Mapping[str, str] | None, page_size: int) -> policy_pb2.ListPoliciesRequest:
    return policy_pb2.ListPoliciesRequest(label_selector=label_selector or {}, page_size=page_size)


def list_nodes(label_selector: Mapping[str, str] | None, page_size: int) -> node_pb2.ListNodesRequest:
    return node_pb2.ListNodesRequest(label_selector=label_selector or {}, page_size=page_size)


def event_filter(
    node: str,
    policy: str,
    verdict: event_pb2.Verdict | str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> event_pb2.EventFilter:
    """An EventFilter; empty values do not filter. Naive datetimes are taken as UTC."""
    event = event_pb2.EventFilter(node=node, policy=policy, verdict=verdict)
    if since is not None:
        event.since.FromDatetime(since)
    if until is not None:
        event.until.FromDatetime(until)
    return event


def flow_filter(
    node: str = "",
    policy: str = "",
    rule_id: str = "",
    cgroup_id: int = 0,
    peer: str = "",
    port: int = 0,
    since: datetime | None = None,
    until: datetime | None = None,
) -> flow_pb2.FlowFilter:
    """A FlowFilter; empty values do not filter. `peer` is a CIDR or one address; `port`
    matches the local or the peer port. Naive datetimes are taken as UTC."""
    flow = flow_pb2.FlowFilter(node=node, policy=policy, rule_id=rule_id, cgroup_id=cgroup_id, peer=peer, port=port)
    if since is not None:
        flow.since.FromDatetime(since)
    if until is not None:
        flow.until.FromDatetime(until)
    return flow


def next_token(previous: str, token: str) -> str:
    """The page token to ask for next; refuses a server that hands out the same token twice,
    which would page for ever."""
    if token and token == previous:
        raise RuntimeError(f"the server returned page token {token!r} twice")
    return token
