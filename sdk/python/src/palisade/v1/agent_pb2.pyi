import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import capture_pb2 as _capture_pb2
from . import event_pb2 as _event_pb2
from . import flow_pb2 as _flow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SyncRequest(_message.Message):
    __slots__ = ("hello", "ack", "nack", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: AgentHello
    ack: BundleAck
    nack: BundleNack
    heartbeat: Heartbeat
    def __init__(self, hello: _Optional[_Union[AgentHello, _Mapping]] = ..., ack: _Optional[_Union[BundleAck, _Mapping]] = ..., nack: _Optional[_Union[BundleNack, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("bundle", "heartbeat", "bundle_part", "capture")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PART_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    bundle: Bundle
    heartbeat: Heartbeat
    bundle_part: BundlePart
    capture: _capture_pb2.CaptureOrder
    def __init__(self, bundle: _Optional[_Union[Bundle, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., bundle_part: _Optional[_Union[BundlePart, _Mapping]] = ..., capture: _Optional[_Union[_capture_pb2.CaptureOrder, _Mapping]] = ...) -> None: ...

class BundlePart(_message.Message):
    __slots__ = ("bundle", "content_size", "content")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    bundle: Bundle
    content_size: int
    content: bytes
    def __init__(self, bundle: _Optional[_Union[Bundle, _Mapping]] = ..., content_size: _Optional[int] = ..., content: _Optional[bytes] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("node_name", "labels", "features", "bundle_digest", "bundle_generation", "agent_version", "server_endpoints", "failsafe_ports", "event_stats", "accepts_bundle_parts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_GENERATION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    FAILSAFE_PORTS_FIELD_NUMBER: _ClassVar[int]
    EVENT_STATS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_BUNDLE_PARTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    labels: _containers.ScalarMap[str, str]
    features: KernelFeatures
    bundle_digest: str
    bundle_generation: int
    agent_version: str
    server_endpoints: _containers.RepeatedScalarFieldContainer[str]
    failsafe_ports: _containers.RepeatedScalarFieldContainer[int]
    event_stats: EventStats
    accepts_bundle_parts: bool
    def __init__(self, node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., features: _Optional[_Union[KernelFeatures, _Mapping]] = ..., bundle_digest: _Optional[str] = ..., bundle_generation: _Optional[int] = ..., agent_version: _Optional[str] = ..., server_endpoints: _Optional[_Iterable[str]] = ..., failsafe_ports: _Optional[_Iterable[int]] = ..., event_stats: _Optional[_Union[EventStats, _Mapping]] = ..., accepts_bundle_parts: _Optional[bool] = ...) -> None: ...

class EventStats(_message.Message):
    __slots__ = ("queue_full", "backlog_full", "undecodable", "pending", "delivered", "ring_full", "pending_bytes", "flows_recorded", "flows_dropped", "flows_untracked", "tune_refused", "flows_reported", "flows_backlog_full", "flow_records_dropped", "flows_pending")
    QUEUE_FULL_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FULL_FIELD_NUMBER: _ClassVar[int]
    UNDECODABLE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    RING_FULL_FIELD_NUMBER: _ClassVar[int]
    PENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    FLOWS_RECORDED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_UNTRACKED_FIELD_NUMBER: _ClassVar[int]
    TUNE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_REPORTED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_BACKLOG_FULL_FIELD_NUMBER: _ClassVar[int]
    FLOW_RECORDS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    FLOWS_PENDING_FIELD_NUMBER: _ClassVar[int]
    queue_full: int
    backlog_full: int
    undecodable: int
    pending: int
    delivered: int
    ring_full: int
    pending_bytes: int
    flows_recorded: int
    flows_dropped: int
    flows_untracked: int
    tune_refused: int
    flows_reported: int
    flows_backlog_full: int
    flow_records_dropped: int
    flows_pending: int
    def __init__(self, queue_full: _Optional[int] = ..., backlog_full: _Optional[int] = ..., undecodable: _Optional[int] = ..., pending: _Optional[int] = ..., delivered: _Optional[int] = ..., ring_full: _Optional[int] = ..., pending_bytes: _Optional[int] = ..., flows_recorded: _Optional[int] = ..., flows_dropped: _Optional[int] = ..., flows_untracked: _Optional[int] = ..., tune_refused: _Optional[int] = ..., flows_reported: _Optional[int] = ..., flows_backlog_full: _Optional[int] = ..., flow_records_dropped: _Optional[int] = ..., flows_pending: _Optional[int] = ...) -> None: ...

class KernelFeatures(_message.Message):
    __slots__ = ("kernel_release", "bpf_lsm", "cgroup_sock_addr", "sock_ops", "socket_filter", "ring_buffer", "btf", "link_update", "btf_offsets", "bpf_lsm_paths", "tcp_congestion")
    class BtfOffsetsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    BPF_LSM_FIELD_NUMBER: _ClassVar[int]
    CGROUP_SOCK_ADDR_FIELD_NUMBER: _ClassVar[int]
    SOCK_OPS_FIELD_NUMBER: _ClassVar[int]
    SOCKET_FILTER_FIELD_NUMBER: _ClassVar[int]
    RING_BUFFER_FIELD_NUMBER: _ClassVar[int]
    BTF_FIELD_NUMBER: _ClassVar[int]
    LINK_UPDATE_FIELD_NUMBER: _ClassVar[int]
    BTF_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    BPF_LSM_PATHS_FIELD_NUMBER: _ClassVar[int]
    TCP_CONGESTION_FIELD_NUMBER: _ClassVar[int]
    kernel_release: str
    bpf_lsm: bool
    cgroup_sock_addr: bool
    sock_ops: bool
    socket_filter: bool
    ring_buffer: bool
    btf: bool
    link_update: bool
    btf_offsets: _containers.ScalarMap[str, int]
    bpf_lsm_paths: bool
    tcp_congestion: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kernel_release: _Optional[str] = ..., bpf_lsm: _Optional[bool] = ..., cgroup_sock_addr: _Optional[bool] = ..., sock_ops: _Optional[bool] = ..., socket_filter: _Optional[bool] = ..., ring_buffer: _Optional[bool] = ..., btf: _Optional[bool] = ..., link_update: _Optional[bool] = ..., btf_offsets: _Optional[_Mapping[str, int]] = ..., bpf_lsm_paths: _Optional[bool] = ..., tcp_congestion: _Optional[_Iterable[str]] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("generation", "digest", "content", "signature", "node", "issued_at")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    digest: str
    content: bytes
    signature: bytes
    node: str
    issued_at: _timestamp_pb2.Timestamp
    def __init__(self, generation: _Optional[int] = ..., digest: _Optional[str] = ..., content: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., node: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BundleAck(_message.Message):
    __slots__ = ("generation", "digest")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    generation: int
    digest: str
    def __init__(self, generation: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class BundleNack(_message.Message):
    __slots__ = ("generation", "digest", "error")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    generation: int
    digest: str
    error: str
    def __init__(self, generation: _Optional[int] = ..., digest: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at", "event_stats")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    EVENT_STATS_FIELD_NUMBER: _ClassVar[int]
    sent_at: _timestamp_pb2.Timestamp
    event_stats: EventStats
    def __init__(self, sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event_stats: _Optional[_Union[EventStats, _Mapping]] = ...) -> None: ...

class ReportEventsRequest(_message.Message):
    __slots__ = ("node_name", "events")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    events: _containers.RepeatedCompositeFieldContainer[_event_pb2.DecisionEvent]
    def __init__(self, node_name: _Optional[str] = ..., events: _Optional[_Iterable[_Union[_event_pb2.DecisionEvent, _Mapping]]] = ...) -> None: ...

class ReportEventsResponse(_message.Message):
    __slots__ = ("accepted", "rate_limited")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rate_limited: int
    def __init__(self, accepted: _Optional[int] = ..., rate_limited: _Optional[int] = ...) -> None: ...

class ReportFlowsRequest(_message.Message):
    __slots__ = ("node_name", "aggregates", "records")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    AGGREGATES_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    aggregates: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowAggregate]
    records: _containers.RepeatedCompositeFieldContainer[_flow_pb2.FlowRecord]
    def __init__(self, node_name: _Optional[str] = ..., aggregates: _Optional[_Iterable[_Union[_flow_pb2.FlowAggregate, _Mapping]]] = ..., records: _Optional[_Iterable[_Union[_flow_pb2.FlowRecord, _Mapping]]] = ...) -> None: ...

class ReportFlowsResponse(_message.Message):
    __slots__ = ("accepted", "rate_limited", "records_wanted")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_WANTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rate_limited: int
    records_wanted: bool
    def __init__(self, accepted: _Optional[int] = ..., rate_limited: _Optional[int] = ..., records_wanted: _Optional[bool] = ...) -> None: ...
