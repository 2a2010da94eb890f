"""connect(): addresses, TLS against the server's CA, and the bearer token on every call."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

import palisade
from palisade.v1 import policy_pb2, token_pb2

from . import support


@pytest.mark.parametrize(
    ("server", "kwargs", "message"),
    [
        ("https://127.0.0.1:1", {}, "needs the CA"),
        ("ftp://127.0.0.1:1", {}, "invalid server address"),
        ("https://127.0.0.1:1/some/path", {"ca_cert": b"pem"}, "invalid server address"),
        ("http://127.0.0.1:1", {"token": "pal_x"}, "travel in the clear"),
        ("127.0.0.1:1", {"token": "pal_x"}, "travel in the clear"),  # no CA: http://
        ("https://127.0.0.1:1", {"ca_cert": b"pem", "token": "pal_\u00e9"}, "a header cannot carry"),
        ("https://127.0.0.1:1", {"ca_cert": b"pem", "client_cert": b"pem"}, "needs its key"),
        ("https://127.0.0.1:1", {"ca_cert": "/nonexistent/ca.crt"}, "cannot read the CA certificate"),
    ],
)
def test_connect_invalid_arguments_raise_connect_error(server: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(palisade.ConnectError, match=message):
        palisade.connect(server, **kwargs)  # type: ignore[arg-type]


def test_connect_leaves_a_token_from_the_environment_out_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PALISADE_TOKEN", "pal_x")
    monkeypatch.delenv("PALISADE_CA_CERT", raising=False)
    with palisade.connect("http://127.0.0.1:1"):
        pass
    with pytest.raises(palisade.ConnectError, match="travel in the clear"):
        palisade.connect("http://127.0.0.1:1", token="pal_x")


def test_connect_without_arguments_uses_the_cli_environment(
    server: support.Server, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # host:port with a CA means https://, as in the Rust SDK and the CLI.
    monkeypatch.setenv("PALISADE_SERVER", server.address.removeprefix("https://"))
    monkeypatch.setenv("PALISADE_CA_CERT", str(server.ca))
    monkeypatch.setenv("PALISADE_TOKEN", f"  {tokens['viewer']}\n")  # whitespace is ignored
    with palisade.connect() as client:
        client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)


def test_connect_with_ca_bytes_and_the_localhost_name_verifies_the_server(
    server: support.Server, tokens: dict[str, str]
) -> None:
    port = server.address.rsplit(":", 1)[1]
    with palisade.connect(
        f"https://localhost:{port}", ca_cert=server.ca.read_bytes(), token=tokens["viewer"]
    ) as client:
        client.wait_ready(timeout=10)
        client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)


def test_connect_with_another_ca_fails_the_handshake(
    server: support.Server, tokens: dict[str, str], tmp_path: Path
) -> None:
    support.server_tool("pki", "init", tmp_path)
    with (
        palisade.connect(server.address, ca_cert=tmp_path / "ca.crt", token=tokens["admin"]) as client,
        pytest.raises(grpc.RpcError) as failed,
    ):
        client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE


def test_calls_without_a_token_are_unauthenticated(server: support.Server) -> None:
    with palisade.connect(server.address, ca_cert=server.ca) as client, pytest.raises(grpc.RpcError) as failed:
        list(client.list_policies())
    assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_calls_with_an_unknown_token_are_unauthenticated(server: support.Server) -> None:
    with (
        palisade.connect(server.address, ca_cert=server.ca, token="pal_" + "0" * 64) as client,
        pytest.raises(grpc.RpcError) as failed,
    ):
        list(client.list_nodes())
    assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_viewer_token_reads_but_apply_is_permission_denied(server: support.Server, tokens: dict[str, str]) -> None:
    with palisade.connect(server.address, ca_cert=server.ca, token=tokens["viewer"]) as client:
        list(client.list_policies())
        with pytest.raises(grpc.RpcError) as failed:
            client.apply(f"name: {support.unique('viewer-apply')}\n")
    assert failed.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_admin_token_names_itself_in_token_service(client: palisade.Client) -> None:
    listed = client.tokens.ListTokens(token_pb2.ListTokensRequest(), timeout=10).tokens
    roles = {token.name: token.role for token in listed}
    assert roles["pytest-admin"] == token_pb2.ROLE_ADMIN
    assert roles["pytest-viewer"] == token_pb2.ROLE_VIEWER


def test_connect_to_several_replicas_uses_the_first_that_answers(
    server: support.Server, tokens: dict[str, str]
) -> None:
    # Port 1 on loopback refuses connections: a replica that is down.
    down = "https://127.0.0.1:1"
    with palisade.connect(
        f"{down}, {server.address}", ca_cert=server.ca, token=tokens["viewer"], connect_timeout=3
    ) as client:
        client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)
    with palisade.connect([server.address, down], ca_cert=server.ca, token=tokens["viewer"]) as client:
        client.policies.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)
    with pytest.raises(palisade.ConnectError, match="no server replica accepted"):
        palisade.connect([down, "https://127.0.0.1:2"], ca_cert=server.ca, connect_timeout=0.5)
    with pytest.raises(palisade.ConnectError, match="no server address"):
        palisade.connect(" , ", ca_cert=server.ca)
    with pytest.raises(palisade.ConnectError, match="mix https:// and http://"):
        palisade.connect([server.address, "http://127.0.0.1:1"], ca_cert=server.ca)
    with pytest.raises(palisade.ConnectError, match="mix https:// and http://"):
        palisade.connect([server.address, "http://127.0.0.1:1"], ca_cert=server.ca)
