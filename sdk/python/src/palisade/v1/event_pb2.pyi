import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_ALLOW: _ClassVar[Verdict]
    VERDICT_DENY: _ClassVar[Verdict]
    VERDICT_AUDIT: _ClassVar[Verdict]
VERDICT_UNSPECIFIED: Verdict
VERDICT_ALLOW: Verdict
VERDICT_DENY: Verdict
VERDICT_AUDIT: Verdict

class DecisionEvent(_message.Message):
    __slots__ = ("id", "node", "policy", "revision", "rule_id", "verdict", "hook", "pid", "comm", "uid", "cgroup_id", "address", "port", "protocol", "bundle_digest", "time", "received_at", "would_deny", "path", "access")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    WOULD_DENY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    id: int
    node: str
    policy: str
    revision: int
    rule_id: str
    verdict: Verdict
    hook: str
    pid: int
    comm: str
    uid: int
    cgroup_id: int
    address: str
    port: int
    protocol: _policy_pb2.Protocol
    bundle_digest: str
    time: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    would_deny: bool
    path: str
    access: _containers.RepeatedScalarFieldContainer[_policy_pb2.FileAccess]
    def __init__(self, id: _Optional[int] = ..., node: _Optional[str] = ..., policy: _Optional[str] = ..., revision: _Optional[int] = ..., rule_id: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., hook: _Optional[str] = ..., pid: _Optional[int] = ..., comm: _Optional[str] = ..., uid: _Optional[int] = ..., cgroup_id: _Optional[int] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[_policy_pb2.Protocol, str]] = ..., bundle_digest: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., would_deny: _Optional[bool] = ..., path: _Optional[str] = ..., access: _Optional[_Iterable[_Union[_policy_pb2.FileAccess, str]]] = ...) -> None: ...

class EventFilter(_message.Message):
    __slots__ = ("node", "policy", "verdict", "since", "until")
    NODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    node: str
    policy: str
    verdict: Verdict
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    def __init__(self, node: _Optional[str] = ..., policy: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[DecisionEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[DecisionEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: EventFilter
    def __init__(self, filter: _Optional[_Union[EventFilter, _Mapping]] = ...) -> None: ...
