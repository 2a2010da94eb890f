import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("name", "labels", "features", "agent_version", "connected", "last_seen", "registered_at", "desired_generation", "desired_digest", "applied_generation", "applied_digest", "last_error", "not_enforceable", "event_stats", "events_rate_limited", "flows_rate_limited")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NOT_ENFORCEABLE_FIELD_NUMBER: _ClassVar[int]
    EVENT_STATS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    features: _agent_pb2.KernelFeatures
    agent_version: str
    connected: bool
    last_seen: _timestamp_pb2.Timestamp
    registered_at: _timestamp_pb2.Timestamp
    desired_generation: int
    desired_digest: str
    applied_generation: int
    applied_digest: str
    last_error: NodeError
    not_enforceable: _containers.RepeatedCompositeFieldContainer[UnenforceableSection]
    event_stats: _agent_pb2.EventStats
    events_rate_limited: int
    flows_rate_limited: int
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., features: _Optional[_Union[_agent_pb2.KernelFeatures, _Mapping]] = ..., agent_version: _Optional[str] = ..., connected: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., desired_generation: _Optional[int] = ..., desired_digest: _Optional[str] = ..., applied_generation: _Optional[int] = ..., applied_digest: _Optional[str] = ..., last_error: _Optional[_Union[NodeError, _Mapping]] = ..., not_enforceable: _Optional[_Iterable[_Union[UnenforceableSection, _Mapping]]] = ..., event_stats: _Optional[_Union[_agent_pb2.EventStats, _Mapping]] = ..., events_rate_limited: _Optional[int] = ..., flows_rate_limited: _Optional[int] = ...) -> None: ...

class UnenforceableSection(_message.Message):
    __slots__ = ("policy", "revision", "section", "reason")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    policy: str
    revision: int
    section: str
    reason: str
    def __init__(self, policy: _Optional[str] = ..., revision: _Optional[int] = ..., section: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class NodeError(_message.Message):
    __slots__ = ("generation", "digest", "message", "at")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    digest: str
    message: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, generation: _Optional[int] = ..., digest: _Optional[str] = ..., message: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("label_selector", "page_size", "page_token")
    class LabelSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    label_selector: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, label_selector: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "next_page_token")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    next_page_token: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetNodeResponse(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Node
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ...) -> None: ...
