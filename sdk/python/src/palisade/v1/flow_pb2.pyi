import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FlowDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOW_DIRECTION_UNSPECIFIED: _ClassVar[FlowDirection]
    FLOW_DIRECTION_OUTBOUND: _ClassVar[FlowDirection]
    FLOW_DIRECTION_INBOUND: _ClassVar[FlowDirection]
FLOW_DIRECTION_UNSPECIFIED: FlowDirection
FLOW_DIRECTION_OUTBOUND: FlowDirection
FLOW_DIRECTION_INBOUND: FlowDirection

class FlowAggregate(_message.Message):
    __slots__ = ("id", "node", "policy", "revision", "rule_id", "cgroup_id", "direction", "local_address", "local_port", "peer_address", "peer_port", "connections", "bytes_sent", "bytes_received", "segments_sent", "segments_received", "retransmits", "srtt_us_min", "srtt_us_avg", "srtt_us_max", "tune_refused", "window_start", "window_end")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_SENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    SRTT_US_MIN_FIELD_NUMBER: _ClassVar[int]
    SRTT_US_AVG_FIELD_NUMBER: _ClassVar[int]
    SRTT_US_MAX_FIELD_NUMBER: _ClassVar[int]
    TUNE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    id: int
    node: str
    policy: str
    revision: int
    rule_id: str
    cgroup_id: int
    direction: FlowDirection
    local_address: str
    local_port: int
    peer_address: str
    peer_port: int
    connections: int
    bytes_sent: int
    bytes_received: int
    segments_sent: int
    segments_received: int
    retransmits: int
    srtt_us_min: int
    srtt_us_avg: int
    srtt_us_max: int
    tune_refused: int
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., node: _Optional[str] = ..., policy: _Optional[str] = ..., revision: _Optional[int] = ..., rule_id: _Optional[str] = ..., cgroup_id: _Optional[int] = ..., direction: _Optional[_Union[FlowDirection, str]] = ..., local_address: _Optional[str] = ..., local_port: _Optional[int] = ..., peer_address: _Optional[str] = ..., peer_port: _Optional[int] = ..., connections: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., segments_sent: _Optional[int] = ..., segments_received: _Optional[int] = ..., retransmits: _Optional[int] = ..., srtt_us_min: _Optional[int] = ..., srtt_us_avg: _Optional[int] = ..., srtt_us_max: _Optional[int] = ..., tune_refused: _Optional[int] = ..., window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FlowRecord(_message.Message):
    __slots__ = ("node", "policy", "revision", "rule_id", "tune_rule", "tune_refused", "cgroup_id", "uid", "direction", "local_address", "local_port", "peer_address", "peer_port", "bytes_sent", "bytes_received", "segments_sent", "segments_received", "retransmits", "srtt_us", "rtt_min_us", "start", "end")
    NODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    TUNE_RULE_FIELD_NUMBER: _ClassVar[int]
    TUNE_REFUSED_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PORT_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_PORT_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_SENT_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    SRTT_US_FIELD_NUMBER: _ClassVar[int]
    RTT_MIN_US_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    node: str
    policy: str
    revision: int
    rule_id: str
    tune_rule: str
    tune_refused: bool
    cgroup_id: int
    uid: int
    direction: FlowDirection
    local_address: str
    local_port: int
    peer_address: str
    peer_port: int
    bytes_sent: int
    bytes_received: int
    segments_sent: int
    segments_received: int
    retransmits: int
    srtt_us: int
    rtt_min_us: int
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, node: _Optional[str] = ..., policy: _Optional[str] = ..., revision: _Optional[int] = ..., rule_id: _Optional[str] = ..., tune_rule: _Optional[str] = ..., tune_refused: _Optional[bool] = ..., cgroup_id: _Optional[int] = ..., uid: _Optional[int] = ..., direction: _Optional[_Union[FlowDirection, str]] = ..., local_address: _Optional[str] = ..., local_port: _Optional[int] = ..., peer_address: _Optional[str] = ..., peer_port: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., segments_sent: _Optional[int] = ..., segments_received: _Optional[int] = ..., retransmits: _Optional[int] = ..., srtt_us: _Optional[int] = ..., rtt_min_us: _Optional[int] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class FlowFilter(_message.Message):
    __slots__ = ("node", "policy", "rule_id", "cgroup_id", "peer", "port", "since", "until", "direction")
    NODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    CGROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    node: str
    policy: str
    rule_id: str
    cgroup_id: int
    peer: str
    port: int
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    direction: FlowDirection
    def __init__(self, node: _Optional[str] = ..., policy: _Optional[str] = ..., rule_id: _Optional[str] = ..., cgroup_id: _Optional[int] = ..., peer: _Optional[str] = ..., port: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., direction: _Optional[_Union[FlowDirection, str]] = ...) -> None: ...

class ListFlowsRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: FlowFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[FlowFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFlowsResponse(_message.Message):
    __slots__ = ("flows", "next_page_token")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[FlowAggregate]
    next_page_token: str
    def __init__(self, flows: _Optional[_Iterable[_Union[FlowAggregate, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchFlowsRequest(_message.Message):
    __slots__ = ("filter", "records")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    filter: FlowFilter
    records: bool
    def __init__(self, filter: _Optional[_Union[FlowFilter, _Mapping]] = ..., records: _Optional[bool] = ...) -> None: ...

class WatchFlowsResponse(_message.Message):
    __slots__ = ("aggregate", "record")
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    aggregate: FlowAggregate
    record: FlowRecord
    def __init__(self, aggregate: _Optional[_Union[FlowAggregate, _Mapping]] = ..., record: _Optional[_Union[FlowRecord, _Mapping]] = ...) -> None: ...

class TopFlowsRequest(_message.Message):
    __slots__ = ("filter", "limit")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    filter: FlowFilter
    limit: int
    def __init__(self, filter: _Optional[_Union[FlowFilter, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class TopFlowsResponse(_message.Message):
    __slots__ = ("talkers",)
    TALKERS_FIELD_NUMBER: _ClassVar[int]
    talkers: _containers.RepeatedCompositeFieldContainer[FlowAggregate]
    def __init__(self, talkers: _Optional[_Iterable[_Union[FlowAggregate, _Mapping]]] = ...) -> None: ...
