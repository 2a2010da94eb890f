"""Errors: what `connect` refuses, and the field violations the server attaches to
INVALID_ARGUMENT (google.rpc.BadRequest in the `grpc-status-details-bin` trailer)."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


class ConnectError(ValueError):
    """The arguments of `connect` cannot make a connection: a malformed address, an https://
    server without a CA, a token where it would travel in the clear, an unreadable PEM file."""


@dataclass(frozen=True)
class FieldViolation:
    """One problem the server found in a request."""

    #: Where, as a path into the request or document: ``network.connect.rules[0].ports[0]``.
    field: str
    #: What is wrong, for people.
    description: str


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """Every field violation of a failed call, in the server's order.

    Works for the errors of sync calls and of `grpc.aio` calls alike; empty when the error
    carries no google.rpc.BadRequest (any code other than INVALID_ARGUMENT, or a transport
    failure)."""
    trailing = getattr(error, "trailing_metadata", None)
    metadata = trailing() if callable(trailing) else None
    violations: list[FieldViolation] = []
    for key, value in metadata or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return violations
