from . import event_pb2 as _event_pb2
from . import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExplainRequest(_message.Message):
    __slots__ = ("node", "connect", "bind", "exec", "open", "cgroup", "uid")
    NODE_FIELD_NUMBER: _ClassVar[int]
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    BIND_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    node: str
    connect: NetworkOperation
    bind: NetworkOperation
    exec: ExecOperation
    open: OpenOperation
    cgroup: str
    uid: int
    def __init__(self, node: _Optional[str] = ..., connect: _Optional[_Union[NetworkOperation, _Mapping]] = ..., bind: _Optional[_Union[NetworkOperation, _Mapping]] = ..., exec: _Optional[_Union[ExecOperation, _Mapping]] = ..., open: _Optional[_Union[OpenOperation, _Mapping]] = ..., cgroup: _Optional[str] = ..., uid: _Optional[int] = ...) -> None: ...

class NetworkOperation(_message.Message):
    __slots__ = ("protocol", "address", "port")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    protocol: _policy_pb2.Protocol
    address: str
    port: int
    def __init__(self, protocol: _Optional[_Union[_policy_pb2.Protocol, str]] = ..., address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class ExecOperation(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class OpenOperation(_message.Message):
    __slots__ = ("path", "access")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    path: str
    access: _containers.RepeatedScalarFieldContainer[_policy_pb2.FileAccess]
    def __init__(self, path: _Optional[str] = ..., access: _Optional[_Iterable[_Union[_policy_pb2.FileAccess, str]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("node", "generation", "digest", "acknowledged", "verdict", "event", "policies", "failsafe", "not_enforced")
    NODE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    FAILSAFE_FIELD_NUMBER: _ClassVar[int]
    NOT_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    node: str
    generation: int
    digest: str
    acknowledged: bool
    verdict: _event_pb2.Verdict
    event: _event_pb2.DecisionEvent
    policies: _containers.RepeatedCompositeFieldContainer[PolicyOutcome]
    failsafe: bool
    not_enforced: str
    def __init__(self, node: _Optional[str] = ..., generation: _Optional[int] = ..., digest: _Optional[str] = ..., acknowledged: _Optional[bool] = ..., verdict: _Optional[_Union[_event_pb2.Verdict, str]] = ..., event: _Optional[_Union[_event_pb2.DecisionEvent, _Mapping]] = ..., policies: _Optional[_Iterable[_Union[PolicyOutcome, _Mapping]]] = ..., failsafe: _Optional[bool] = ..., not_enforced: _Optional[str] = ...) -> None: ...

class PolicyOutcome(_message.Message):
    __slots__ = ("policy", "revision", "mode", "applies", "reason", "verdict", "rule_id", "would_deny", "decides")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    APPLIES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    WOULD_DENY_FIELD_NUMBER: _ClassVar[int]
    DECIDES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    revision: int
    mode: _policy_pb2.Mode
    applies: bool
    reason: str
    verdict: _event_pb2.Verdict
    rule_id: str
    would_deny: bool
    decides: bool
    def __init__(self, policy: _Optional[str] = ..., revision: _Optional[int] = ..., mode: _Optional[_Union[_policy_pb2.Mode, str]] = ..., applies: _Optional[bool] = ..., reason: _Optional[str] = ..., verdict: _Optional[_Union[_event_pb2.Verdict, str]] = ..., rule_id: _Optional[str] = ..., would_deny: _Optional[bool] = ..., decides: _Optional[bool] = ...) -> None: ...
