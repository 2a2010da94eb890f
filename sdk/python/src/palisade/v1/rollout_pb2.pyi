from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_APPLIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_PENDING: _ClassVar[RolloutState]
    ROLLOUT_STATE_FAILED: _ClassVar[RolloutState]
    ROLLOUT_STATE_DISCONNECTED: _ClassVar[RolloutState]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_APPLIED: RolloutState
ROLLOUT_STATE_PENDING: RolloutState
ROLLOUT_STATE_FAILED: RolloutState
ROLLOUT_STATE_DISCONNECTED: RolloutState

class GetRolloutRequest(_message.Message):
    __slots__ = ("policy", "revision")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    policy: str
    revision: int
    def __init__(self, policy: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[PolicyRollout]
    def __init__(self, policies: _Optional[_Iterable[_Union[PolicyRollout, _Mapping]]] = ...) -> None: ...

class PolicyRollout(_message.Message):
    __slots__ = ("policy", "revision", "deleted", "selected", "applied", "pending", "failed", "disconnected", "nodes")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    revision: int
    deleted: bool
    selected: int
    applied: int
    pending: int
    failed: int
    disconnected: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeRollout]
    def __init__(self, policy: _Optional[str] = ..., revision: _Optional[int] = ..., deleted: _Optional[bool] = ..., selected: _Optional[int] = ..., applied: _Optional[int] = ..., pending: _Optional[int] = ..., failed: _Optional[int] = ..., disconnected: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeRollout, _Mapping]]] = ...) -> None: ...

class NodeRollout(_message.Message):
    __slots__ = ("node", "state", "enforced_revision", "applied_generation", "desired_generation", "error", "not_enforced")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_REVISION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NOT_ENFORCED_FIELD_NUMBER: _ClassVar[int]
    node: str
    state: RolloutState
    enforced_revision: int
    applied_generation: int
    desired_generation: int
    error: str
    not_enforced: str
    def __init__(self, node: _Optional[str] = ..., state: _Optional[_Union[RolloutState, str]] = ..., enforced_revision: _Optional[int] = ..., applied_generation: _Optional[int] = ..., desired_generation: _Optional[int] = ..., error: _Optional[str] = ..., not_enforced: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "bundle_public_key", "secure")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    version: str
    bundle_public_key: str
    secure: bool
    def __init__(self, version: _Optional[str] = ..., bundle_public_key: _Optional[str] = ..., secure: _Optional[bool] = ...) -> None: ...
