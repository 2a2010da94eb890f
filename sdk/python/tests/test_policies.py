"""Policies: apply from YAML, list page by page, and the server's field violations."""

from __future__ import annotations

import grpc
import pytest

import palisade
from palisade.v1 import policy_pb2

from . import support


def deny_document(name: str, labels: dict[str, str], port: int = 9999) -> str:
    label_lines = "".join(f"  {key}: {value}\n" for key, value in labels.items())
    return f"""\
name: {name}
labels:
{label_lines}workload:
  cgroup: /palisade-pytest
network:
  connect:
    rules:
      - id: block-port
        action: deny
        cidrs: [127.0.0.0/8]
        ports: [{port}]
        protocols: [tcp]
"""


def test_apply_yaml_creates_a_revision_that_list_returns(client: palisade.Client) -> None:
    name, batch = support.unique("apply"), support.unique("batch")
    applied = client.apply(deny_document(name, {"batch": batch}, port=4242))
    assert applied.created and applied.changed
    assert applied.policy.revision == 1
    assert applied.policy.updated_by == "pytest-admin"  # the token's name is the actor

    (listed,) = client.list_policies(label_selector={"batch": batch})
    assert listed.policy.name == name
    assert listed.digest == applied.policy.digest
    rule = listed.policy.network.connect.rules[0]
    assert (rule.id, rule.action, rule.ports[0].first) == ("block-port", policy_pb2.ACTION_DENY, 4242)
    assert listed.policy.mode == policy_pb2.MODE_ENFORCE  # the default, filled in by the server


def test_apply_identical_document_changes_nothing_and_bytes_are_accepted(client: palisade.Client) -> None:
    document = deny_document(support.unique("same"), {"batch": support.unique("batch")})
    first = client.apply(document)
    again = client.apply(document.encode())
    assert not again.changed and not again.created
    assert again.policy.revision == first.policy.revision


def test_apply_dry_run_stores_nothing(client: palisade.Client) -> None:
    name = support.unique("dry")
    response = client.apply(deny_document(name, {"batch": "dry"}), dry_run=True)
    assert response.created
    with pytest.raises(grpc.RpcError) as failed:
        client.policies.GetPolicy(policy_pb2.GetPolicyRequest(name=name), timeout=10)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND


def test_apply_with_stale_expected_revision_is_aborted(client: palisade.Client) -> None:
    document = deny_document(support.unique("cas"), {"batch": support.unique("batch")})
    client.apply(document)
    with pytest.raises(grpc.RpcError) as failed:
        client.apply(document.replace("9999", "9998"), expected_revision=7)
    assert failed.value.code() is grpc.StatusCode.ABORTED
    with pytest.raises(grpc.RpcError) as exists:
        client.apply(document, expected_revision=0)  # 0: create only
    assert exists.value.code() is grpc.StatusCode.ALREADY_EXISTS


def test_list_policies_follows_page_tokens_in_name_order(client: palisade.Client) -> None:
    batch = support.unique("batch")
    names = sorted(support.unique(f"page{i}") for i in range(5))
    for name in reversed(names):
        client.apply(deny_document(name, {"batch": batch}))

    first = client.policies.ListPolicies(
        policy_pb2.ListPoliciesRequest(label_selector={"batch": batch}, page_size=2), timeout=10
    )
    assert len(first.policies) == 2 and first.next_page_token, "the listing must really span pages"
    assert [p.policy.name for p in client.list_policies(label_selector={"batch": batch}, page_size=2)] == names


def test_list_policies_label_selector_matches_nothing_is_empty(client: palisade.Client) -> None:
    assert list(client.list_policies(label_selector={"batch": support.unique("none")})) == []


def test_apply_bad_document_is_invalid_argument_with_field_paths(client: palisade.Client) -> None:
    name = support.unique("bad")
    document = deny_document(name, {"batch": "bad"}, port=70000)
    with pytest.raises(grpc.RpcError) as failed:
        client.apply(document)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in palisade.field_violations(failed.value)]
    assert "network.connect.rules[0].ports[0]" in fields, fields
    # Rejected whole: nothing is stored.
    with pytest.raises(grpc.RpcError) as missing:
        client.policies.GetPolicy(policy_pb2.GetPolicyRequest(name=name), timeout=10)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def test_apply_document_with_unknown_field_names_its_path(client: palisade.Client) -> None:
    document = deny_document(support.unique("unknown"), {"batch": "bad"}).replace("protocols:", "protocolz:")
    with pytest.raises(grpc.RpcError) as failed:
        client.apply(document)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    violations = palisade.field_violations(failed.value)
    assert [v.field for v in violations] == ["network.connect.rules[0].protocolz"], violations


def test_field_violations_of_other_errors_are_empty(client: palisade.Client) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        client.policies.GetPolicy(policy_pb2.GetPolicyRequest(name=support.unique("absent")), timeout=10)
    assert failed.value.code() is grpc.StatusCode.NOT_FOUND
    assert palisade.field_violations(failed.value) == []


def test_apply_all_is_one_transaction_all_or_nothing(client: palisade.Client) -> None:
    batch = support.unique("all")
    names = [support.unique("many") for _ in range(3)]
    applied = client.apply_all([deny_document(name, {"batch": batch}) for name in names])
    assert [r.policy.policy.name for r in applied.results] == names
    assert all(r.created for r in applied.results)
    assert {p.policy.name for p in client.list_policies(label_selector={"batch": batch})} == set(names)

    # One bad entry refuses the whole batch, with its index in the field path.
    broken = support.unique("broken")
    good = deny_document(support.unique("good"), {"batch": broken})
    with pytest.raises(grpc.RpcError) as failed:
        client.apply_all([good, deny_document(support.unique("bad"), {"batch": broken}, port=70000)])
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in palisade.field_violations(failed.value)]
    assert fields == ["policies[1].network.connect.rules[0].ports[0]"]
    assert list(client.list_policies(label_selector={"batch": broken})) == []
