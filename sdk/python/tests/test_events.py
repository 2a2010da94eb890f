"""Events: listing page by page and watching live, with events a node reports through
AgentService (the kernel's own events are in test_kernel.py)."""

from __future__ import annotations

import threading

import grpc
import pytest

import palisade
from palisade.v1 import agent_pb2, event_pb2, policy_pb2

from . import support


def report(reporter: tuple[str, palisade.Client], policy: str, rules: list[str]) -> int:
    """Reports one deny event per rule id for `policy` as the reporter's node."""
    node, client = reporter
    events = [
        event_pb2.DecisionEvent(
            policy=policy,
            revision=1,
            rule_id=rule,
            verdict=event_pb2.VERDICT_DENY,
            hook="cgroup/connect4",
            pid=1000 + i,
            comm="pytest",
            address="127.0.0.1",
            port=9999,
            protocol=policy_pb2.PROTOCOL_TCP,
        )
        for i, rule in enumerate(rules)
    ]
    response = client.agent.ReportEvents(
        iter([agent_pb2.ReportEventsRequest(node_name=node, events=events)]), timeout=10
    )
    return response.accepted


def test_list_events_follows_page_tokens_newest_first(
    client: palisade.Client, reporter: tuple[str, palisade.Client]
) -> None:
    policy = support.unique("listed")
    rules = [f"rule-{i}" for i in range(7)]
    assert report(reporter, policy, rules) == 7

    first = client.events.ListEvents(
        event_pb2.ListEventsRequest(filter=event_pb2.EventFilter(policy=policy), page_size=3), timeout=10
    )
    assert len(first.events) == 3 and first.next_page_token, "the listing must really span pages"
    events = list(client.list_events(policy=policy, page_size=3))
    assert [e.rule_id for e in events] == list(reversed(rules))
    ids = [e.id for e in events]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7
    assert {e.node for e in events} == {reporter[0]}  # set by the server from the stream


def test_list_events_filters_by_node_and_verdict(
    client: palisade.Client, reporter: tuple[str, palisade.Client]
) -> None:
    policy = support.unique("filtered")
    report(reporter, policy, ["a", "b"])
    assert len(list(client.list_events(policy=policy, node=reporter[0], verdict=event_pb2.VERDICT_DENY))) == 2
    assert list(client.list_events(policy=policy, verdict=event_pb2.VERDICT_AUDIT)) == []
    assert list(client.list_events(policy=policy, node=support.unique("elsewhere"))) == []


def test_watch_events_delivers_matching_events_stored_after_it_returns(
    client: palisade.Client, reporter: tuple[str, palisade.Client]
) -> None:
    policy, other = support.unique("watched"), support.unique("unwatched")
    with client.watch_events(policy=policy, timeout=30) as watch:
        # Stored first, so a watch that ignored its filter would yield it first.
        report(reporter, other, ["noise"])
        report(reporter, policy, ["first", "second"])
        received = [next(watch), next(watch)]
    assert [(e.policy, e.rule_id) for e in received] == [(policy, "first"), (policy, "second")]
    assert received[0].id > 0 and received[0].received_at.seconds > 0


def test_watch_events_cancel_ends_the_iteration(client: palisade.Client) -> None:
    watch = client.watch_events(policy=support.unique("idle"), timeout=30)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(list(watch)))
    reader.start()
    watch.cancel()
    reader.join(timeout=10)
    assert not reader.is_alive() and result == [[]]


def test_watch_events_with_unknown_verdict_is_invalid_argument(client: palisade.Client) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        next(client.watch_events(verdict=42, timeout=10))  # type: ignore[arg-type]  # no such verdict
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in palisade.field_violations(failed.value)] == ["filter.verdict"]


def test_report_events_for_another_node_is_permission_denied(
    server: support.Server, reporter: tuple[str, palisade.Client]
) -> None:
    _, client = reporter
    with pytest.raises(grpc.RpcError) as failed:
        report((support.unique("impostor"), client), support.unique("p"), ["r"])
    assert failed.value.code() is grpc.StatusCode.PERMISSION_DENIED
