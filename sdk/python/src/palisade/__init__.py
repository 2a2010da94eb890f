"""Palisade Python SDK: the v1 API (generated from proto/palisade/v1/*.proto, in
`palisade.v1`) and a thin client over it.

    import palisade
    with palisade.connect("https://127.0.0.1:50051", ca_cert="pki/ca.crt", token=token) as client:
        client.apply(open("policy.yaml").read())
        for event in client.watch_events(policy="deny-demo-port"):
            print(event.node, event.rule_id, event.address, event.port)

`palisade.aio` has the same client for asyncio.
"""

from . import v1
from .client import Client, EventWatch, connect
from .errors import ConnectError, FieldViolation, field_violations

__version__ = "0.1.0"

__all__ = ["Client", "ConnectError", "EventWatch", "FieldViolation", "connect", "field_violations", "v1"]
