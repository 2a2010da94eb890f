import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaptureState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTURE_STATE_UNSPECIFIED: _ClassVar[CaptureState]
    CAPTURE_STATE_RUNNING: _ClassVar[CaptureState]
    CAPTURE_STATE_FINISHED: _ClassVar[CaptureState]

class CaptureNodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTURE_NODE_STATE_UNSPECIFIED: _ClassVar[CaptureNodeState]
    CAPTURE_NODE_STATE_PENDING: _ClassVar[CaptureNodeState]
    CAPTURE_NODE_STATE_RUNNING: _ClassVar[CaptureNodeState]
    CAPTURE_NODE_STATE_FINISHED: _ClassVar[CaptureNodeState]
    CAPTURE_NODE_STATE_FAILED: _ClassVar[CaptureNodeState]

class CaptureFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTURE_FORMAT_UNSPECIFIED: _ClassVar[CaptureFormat]
    CAPTURE_FORMAT_PCAPNG: _ClassVar[CaptureFormat]
    CAPTURE_FORMAT_PCAP: _ClassVar[CaptureFormat]
CAPTURE_STATE_UNSPECIFIED: CaptureState
CAPTURE_STATE_RUNNING: CaptureState
CAPTURE_STATE_FINISHED: CaptureState
CAPTURE_NODE_STATE_UNSPECIFIED: CaptureNodeState
CAPTURE_NODE_STATE_PENDING: CaptureNodeState
CAPTURE_NODE_STATE_RUNNING: CaptureNodeState
CAPTURE_NODE_STATE_FINISHED: CaptureNodeState
CAPTURE_NODE_STATE_FAILED: CaptureNodeState
CAPTURE_FORMAT_UNSPECIFIED: CaptureFormat
CAPTURE_FORMAT_PCAPNG: CaptureFormat
CAPTURE_FORMAT_PCAP: CaptureFormat

class CaptureLimits(_message.Message):
    __slots__ = ("duration", "max_packets", "max_bytes")
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    duration: _duration_pb2.Duration
    max_packets: int
    max_bytes: int
    def __init__(self, duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_packets: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class StartCaptureRequest(_message.Message):
    __slots__ = ("expression", "node_selector", "interfaces", "snap_length", "limits")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SNAP_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    expression: str
    node_selector: _containers.ScalarMap[str, str]
    interfaces: _containers.RepeatedScalarFieldContainer[str]
    snap_length: int
    limits: CaptureLimits
    def __init__(self, expression: _Optional[str] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., interfaces: _Optional[_Iterable[str]] = ..., snap_length: _Optional[int] = ..., limits: _Optional[_Union[CaptureLimits, _Mapping]] = ...) -> None: ...

class StartCaptureResponse(_message.Message):
    __slots__ = ("capture",)
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    capture: Capture
    def __init__(self, capture: _Optional[_Union[Capture, _Mapping]] = ...) -> None: ...

class Capture(_message.Message):
    __slots__ = ("id", "expression", "node_selector", "interfaces", "snap_length", "limits", "created_by", "created_at", "finished_at", "state", "nodes", "stored_bytes", "node_count", "nodes_finished", "packets_kept")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SNAP_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NODE_COUNT_FIELD_NUMBER: _ClassVar[int]
    NODES_FINISHED_FIELD_NUMBER: _ClassVar[int]
    PACKETS_KEPT_FIELD_NUMBER: _ClassVar[int]
    id: int
    expression: str
    node_selector: _containers.ScalarMap[str, str]
    interfaces: _containers.RepeatedScalarFieldContainer[str]
    snap_length: int
    limits: CaptureLimits
    created_by: str
    created_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    state: CaptureState
    nodes: _containers.RepeatedCompositeFieldContainer[CaptureNodeStatus]
    stored_bytes: int
    node_count: int
    nodes_finished: int
    packets_kept: int
    def __init__(self, id: _Optional[int] = ..., expression: _Optional[str] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., interfaces: _Optional[_Iterable[str]] = ..., snap_length: _Optional[int] = ..., limits: _Optional[_Union[CaptureLimits, _Mapping]] = ..., created_by: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[CaptureState, str]] = ..., nodes: _Optional[_Iterable[_Union[CaptureNodeStatus, _Mapping]]] = ..., stored_bytes: _Optional[int] = ..., node_count: _Optional[int] = ..., nodes_finished: _Optional[int] = ..., packets_kept: _Optional[int] = ...) -> None: ...

class CaptureNodeStatus(_message.Message):
    __slots__ = ("node", "state", "packets_seen", "packets_kept", "packets_dropped", "bytes", "stop_reason", "error", "started_at", "finished_at")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SEEN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_KEPT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    node: str
    state: CaptureNodeState
    packets_seen: int
    packets_kept: int
    packets_dropped: int
    bytes: int
    stop_reason: str
    error: str
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, node: _Optional[str] = ..., state: _Optional[_Union[CaptureNodeState, str]] = ..., packets_seen: _Optional[int] = ..., packets_kept: _Optional[int] = ..., packets_dropped: _Optional[int] = ..., bytes: _Optional[int] = ..., stop_reason: _Optional[str] = ..., error: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetCaptureRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class GetCaptureResponse(_message.Message):
    __slots__ = ("capture",)
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    capture: Capture
    def __init__(self, capture: _Optional[_Union[Capture, _Mapping]] = ...) -> None: ...

class ListCapturesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCapturesResponse(_message.Message):
    __slots__ = ("captures", "next_page_token")
    CAPTURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    captures: _containers.RepeatedCompositeFieldContainer[Capture]
    next_page_token: str
    def __init__(self, captures: _Optional[_Iterable[_Union[Capture, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StopCaptureRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class StopCaptureResponse(_message.Message):
    __slots__ = ("capture",)
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    capture: Capture
    def __init__(self, capture: _Optional[_Union[Capture, _Mapping]] = ...) -> None: ...

class DeleteCaptureRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class DeleteCaptureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownloadCaptureRequest(_message.Message):
    __slots__ = ("id", "format")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    id: int
    format: CaptureFormat
    def __init__(self, id: _Optional[int] = ..., format: _Optional[_Union[CaptureFormat, str]] = ...) -> None: ...

class DownloadCaptureResponse(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class CaptureOrder(_message.Message):
    __slots__ = ("id", "stop", "expression", "interfaces", "snap_length", "deadline", "max_packets", "max_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    EXPRESSION_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    SNAP_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    MAX_PACKETS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: int
    stop: bool
    expression: str
    interfaces: _containers.RepeatedScalarFieldContainer[str]
    snap_length: int
    deadline: _timestamp_pb2.Timestamp
    max_packets: int
    max_bytes: int
    def __init__(self, id: _Optional[int] = ..., stop: _Optional[bool] = ..., expression: _Optional[str] = ..., interfaces: _Optional[_Iterable[str]] = ..., snap_length: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_packets: _Optional[int] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class CapturedPacket(_message.Message):
    __slots__ = ("timestamp_ns", "wire_length", "data")
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    WIRE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    timestamp_ns: int
    wire_length: int
    data: bytes
    def __init__(self, timestamp_ns: _Optional[int] = ..., wire_length: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReportCaptureRequest(_message.Message):
    __slots__ = ("node_name", "capture_id", "interface", "packets", "packets_seen", "packets_dropped", "stop_reason", "error", "failed")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    PACKETS_SEEN_FIELD_NUMBER: _ClassVar[int]
    PACKETS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    capture_id: int
    interface: int
    packets: _containers.RepeatedCompositeFieldContainer[CapturedPacket]
    packets_seen: int
    packets_dropped: int
    stop_reason: str
    error: str
    failed: bool
    def __init__(self, node_name: _Optional[str] = ..., capture_id: _Optional[int] = ..., interface: _Optional[int] = ..., packets: _Optional[_Iterable[_Union[CapturedPacket, _Mapping]]] = ..., packets_seen: _Optional[int] = ..., packets_dropped: _Optional[int] = ..., stop_reason: _Optional[str] = ..., error: _Optional[str] = ..., failed: _Optional[bool] = ...) -> None: ...

class ReportCaptureResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
