"""palisade.aio: the same client on grpc.aio (each test runs its own event loop)."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

import palisade
import palisade.aio
from palisade.v1 import node_pb2

from . import support
from .test_events import report
from .test_policies import deny_document


def test_aio_apply_then_list_pages(server: support.Server, tokens: dict[str, str]) -> None:
    batch = support.unique("aio-batch")
    names = sorted(support.unique(f"aio{i}") for i in range(3))

    async def run() -> list[str]:
        async with palisade.aio.connect(server.address, ca_cert=server.ca, token=tokens["editor"]) as client:
            await client.wait_ready(timeout=10)
            for name in names:
                applied = await client.apply(deny_document(name, {"batch": batch}))
                assert applied.created and applied.policy.updated_by == "pytest-editor"
            return [p.policy.name async for p in client.list_policies(label_selector={"batch": batch}, page_size=1)]

    assert asyncio.run(run()) == names


def test_aio_bad_document_has_field_violations(server: support.Server, tokens: dict[str, str]) -> None:
    async def run() -> grpc.aio.AioRpcError:
        async with palisade.aio.connect(server.address, ca_cert=server.ca, token=tokens["editor"]) as client:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.apply(deny_document(support.unique("aio-bad"), {"batch": "bad"}, port=0))
            return failed.value

    error = asyncio.run(run())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "network.connect.rules[0].ports[0]" in [v.field for v in palisade.field_violations(error)]


def test_aio_without_token_is_unauthenticated(server: support.Server) -> None:
    async def run() -> grpc.StatusCode:
        async with palisade.aio.connect(server.address, ca_cert=server.ca) as client:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.nodes.GetNode(node_pb2.GetNodeRequest(name="any"), timeout=10)
            return failed.value.code()

    assert asyncio.run(run()) is grpc.StatusCode.UNAUTHENTICATED


def test_aio_watch_then_list_events(
    server: support.Server, tokens: dict[str, str], reporter: tuple[str, palisade.Client]
) -> None:
    policy = support.unique("aio-watched")

    async def run() -> tuple[list[str], list[str]]:
        async with palisade.aio.connect(server.address, ca_cert=server.ca, token=tokens["viewer"]) as client:
            async with await client.watch_events(policy=policy, timeout=30) as watch:
                # The reporter is a blocking client: off the loop, so the watch keeps reading.
                await asyncio.to_thread(report, reporter, policy, ["one", "two", "three"])
                watched = [(await anext(watch)).rule_id for _ in range(3)]
            listed = [e.rule_id async for e in client.list_events(policy=policy, page_size=2)]
            return watched, listed

    watched, listed = asyncio.run(run())
    assert watched == ["one", "two", "three"]
    assert listed == ["three", "two", "one"]


def test_aio_watch_cancel_ends_the_iteration(server: support.Server, tokens: dict[str, str]) -> None:
    async def run() -> list[object]:
        async with palisade.aio.connect(server.address, ca_cert=server.ca, token=tokens["viewer"]) as client:
            watch = await client.watch_events(policy=support.unique("aio-idle"), timeout=30)
            reader = asyncio.create_task(asyncio.wait_for(_drain(watch), 10))
            await asyncio.sleep(0)  # let the reader start waiting on the stream
            watch.cancel()
            return await reader

    assert asyncio.run(run()) == []


async def _drain(watch: palisade.aio.AsyncEventWatch) -> list[object]:
    return [event async for event in watch]


def test_aio_connect_any_uses_the_first_replica_that_answers(server: support.Server, tokens: dict[str, str]) -> None:
    down = "https://127.0.0.1:1"

    async def run() -> int:
        client = await palisade.aio.connect_any(
            [down, server.address], ca_cert=server.ca, token=tokens["viewer"], connect_timeout=3
        )
        async with client:
            return len([p async for p in client.list_policies()])

    assert asyncio.run(run()) >= 0
    with pytest.raises(palisade.ConnectError, match="connect_any"):
        palisade.aio.connect(f"{down},{server.address}", ca_cert=server.ca)

    async def none_answers() -> None:
        await palisade.aio.connect_any([down], ca_cert=server.ca, connect_timeout=0.5)

    with pytest.raises(palisade.ConnectError, match="no server replica accepted"):
        asyncio.run(none_answers())
