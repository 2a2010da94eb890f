import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_ENFORCE: _ClassVar[Mode]
    MODE_AUDIT: _ClassVar[Mode]
    MODE_DISABLED: _ClassVar[Mode]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_ALLOW: _ClassVar[Action]
    ACTION_DENY: _ClassVar[Action]
    ACTION_AUDIT: _ClassVar[Action]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]

class FileAccess(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_ACCESS_UNSPECIFIED: _ClassVar[FileAccess]
    FILE_ACCESS_READ: _ClassVar[FileAccess]
    FILE_ACCESS_WRITE: _ClassVar[FileAccess]

class RevisionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVISION_KIND_UNSPECIFIED: _ClassVar[RevisionKind]
    REVISION_KIND_CREATED: _ClassVar[RevisionKind]
    REVISION_KIND_UPDATED: _ClassVar[RevisionKind]
    REVISION_KIND_DELETED: _ClassVar[RevisionKind]
MODE_UNSPECIFIED: Mode
MODE_ENFORCE: Mode
MODE_AUDIT: Mode
MODE_DISABLED: Mode
ACTION_UNSPECIFIED: Action
ACTION_ALLOW: Action
ACTION_DENY: Action
ACTION_AUDIT: Action
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
FILE_ACCESS_UNSPECIFIED: FileAccess
FILE_ACCESS_READ: FileAccess
FILE_ACCESS_WRITE: FileAccess
REVISION_KIND_UNSPECIFIED: RevisionKind
REVISION_KIND_CREATED: RevisionKind
REVISION_KIND_UPDATED: RevisionKind
REVISION_KIND_DELETED: RevisionKind

class Policy(_message.Message):
    __slots__ = ("name", "labels", "mode", "node_selector", "workload", "network", "description", "exec", "files", "connections")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    mode: Mode
    node_selector: NodeSelector
    workload: WorkloadSelector
    network: NetworkPolicy
    description: str
    exec: PathSection
    files: PathSection
    connections: ConnectionsPolicy
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., mode: _Optional[_Union[Mode, str]] = ..., node_selector: _Optional[_Union[NodeSelector, _Mapping]] = ..., workload: _Optional[_Union[WorkloadSelector, _Mapping]] = ..., network: _Optional[_Union[NetworkPolicy, _Mapping]] = ..., description: _Optional[str] = ..., exec: _Optional[_Union[PathSection, _Mapping]] = ..., files: _Optional[_Union[PathSection, _Mapping]] = ..., connections: _Optional[_Union[ConnectionsPolicy, _Mapping]] = ...) -> None: ...

class ConnectionsPolicy(_message.Message):
    __slots__ = ("observe", "tune")
    OBSERVE_FIELD_NUMBER: _ClassVar[int]
    TUNE_FIELD_NUMBER: _ClassVar[int]
    observe: ObserveSection
    tune: TuneSection
    def __init__(self, observe: _Optional[_Union[ObserveSection, _Mapping]] = ..., tune: _Optional[_Union[TuneSection, _Mapping]] = ...) -> None: ...

class ObserveSection(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[PeerRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[PeerRule, _Mapping]]] = ...) -> None: ...

class PeerRule(_message.Message):
    __slots__ = ("id", "cidrs", "ports", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    description: str
    def __init__(self, id: _Optional[str] = ..., cidrs: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., description: _Optional[str] = ...) -> None: ...

class TuneSection(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[TuneRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[TuneRule, _Mapping]]] = ...) -> None: ...

class TuneRule(_message.Message):
    __slots__ = ("id", "cidrs", "ports", "congestion", "initial_cwnd", "no_delay", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    CONGESTION_FIELD_NUMBER: _ClassVar[int]
    INITIAL_CWND_FIELD_NUMBER: _ClassVar[int]
    NO_DELAY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    congestion: str
    initial_cwnd: int
    no_delay: bool
    description: str
    def __init__(self, id: _Optional[str] = ..., cidrs: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., congestion: _Optional[str] = ..., initial_cwnd: _Optional[int] = ..., no_delay: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class NodeSelector(_message.Message):
    __slots__ = ("match_labels",)
    class MatchLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MATCH_LABELS_FIELD_NUMBER: _ClassVar[int]
    match_labels: _containers.ScalarMap[str, str]
    def __init__(self, match_labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class WorkloadSelector(_message.Message):
    __slots__ = ("cgroup", "uid")
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    cgroup: str
    uid: int
    def __init__(self, cgroup: _Optional[str] = ..., uid: _Optional[int] = ...) -> None: ...

class NetworkPolicy(_message.Message):
    __slots__ = ("connect", "bind")
    CONNECT_FIELD_NUMBER: _ClassVar[int]
    BIND_FIELD_NUMBER: _ClassVar[int]
    connect: RuleSection
    bind: RuleSection
    def __init__(self, connect: _Optional[_Union[RuleSection, _Mapping]] = ..., bind: _Optional[_Union[RuleSection, _Mapping]] = ...) -> None: ...

class RuleSection(_message.Message):
    __slots__ = ("default", "rules")
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    default: Action
    rules: _containers.RepeatedCompositeFieldContainer[NetworkRule]
    def __init__(self, default: _Optional[_Union[Action, str]] = ..., rules: _Optional[_Iterable[_Union[NetworkRule, _Mapping]]] = ...) -> None: ...

class NetworkRule(_message.Message):
    __slots__ = ("id", "action", "cidrs", "ports", "protocols", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOLS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: Action
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    protocols: _containers.RepeatedScalarFieldContainer[Protocol]
    description: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., cidrs: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., protocols: _Optional[_Iterable[_Union[Protocol, str]]] = ..., description: _Optional[str] = ...) -> None: ...

class PathSection(_message.Message):
    __slots__ = ("default", "rules")
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    default: Action
    rules: _containers.RepeatedCompositeFieldContainer[PathRule]
    def __init__(self, default: _Optional[_Union[Action, str]] = ..., rules: _Optional[_Iterable[_Union[PathRule, _Mapping]]] = ...) -> None: ...

class PathRule(_message.Message):
    __slots__ = ("id", "action", "paths", "access", "description")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: Action
    paths: _containers.RepeatedScalarFieldContainer[str]
    access: _containers.RepeatedScalarFieldContainer[FileAccess]
    description: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., paths: _Optional[_Iterable[str]] = ..., access: _Optional[_Iterable[_Union[FileAccess, str]]] = ..., description: _Optional[str] = ...) -> None: ...

class PortRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class StoredPolicy(_message.Message):
    __slots__ = ("policy", "revision", "digest", "created_at", "updated_at", "updated_by")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    revision: int
    digest: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., revision: _Optional[int] = ..., digest: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class ApplyPolicyRequest(_message.Message):
    __slots__ = ("policy", "document", "expected_revision", "dry_run")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    document: str
    expected_revision: int
    dry_run: bool
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., document: _Optional[str] = ..., expected_revision: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ApplyPolicyResponse(_message.Message):
    __slots__ = ("policy", "changed", "created")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    policy: StoredPolicy
    changed: bool
    created: bool
    def __init__(self, policy: _Optional[_Union[StoredPolicy, _Mapping]] = ..., changed: _Optional[bool] = ..., created: _Optional[bool] = ...) -> None: ...

class ApplyPoliciesRequest(_message.Message):
    __slots__ = ("policies", "dry_run")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[ApplyPolicyRequest]
    dry_run: bool
    def __init__(self, policies: _Optional[_Iterable[_Union[ApplyPolicyRequest, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ApplyPoliciesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ApplyPolicyResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ApplyPolicyResponse, _Mapping]]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("name", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class GetPolicyResponse(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: StoredPolicy
    def __init__(self, policy: _Optional[_Union[StoredPolicy, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
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

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "next_page_token")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[StoredPolicy]
    next_page_token: str
    def __init__(self, policies: _Optional[_Iterable[_Union[StoredPolicy, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeletePolicyRequest(_message.Message):
    __slots__ = ("name", "expected_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class DeletePolicyResponse(_message.Message):
    __slots__ = ("revision",)
    REVISION_FIELD_NUMBER: _ClassVar[int]
    revision: int
    def __init__(self, revision: _Optional[int] = ...) -> None: ...

class ListPolicyRevisionsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class PolicyRevision(_message.Message):
    __slots__ = ("revision", "kind", "policy", "digest", "created_at", "created_by")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    revision: int
    kind: RevisionKind
    policy: Policy
    digest: str
    created_at: _timestamp_pb2.Timestamp
    created_by: str
    def __init__(self, revision: _Optional[int] = ..., kind: _Optional[_Union[RevisionKind, str]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., digest: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ...) -> None: ...

class ListPolicyRevisionsResponse(_message.Message):
    __slots__ = ("revisions", "next_page_token")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[PolicyRevision]
    next_page_token: str
    def __init__(self, revisions: _Optional[_Iterable[_Union[PolicyRevision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CompilePolicyRequest(_message.Message):
    __slots__ = ("policy", "document", "node_name", "disassemble")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    DISASSEMBLE_FIELD_NUMBER: _ClassVar[int]
    policy: Policy
    document: str
    node_name: str
    disassemble: bool
    def __init__(self, policy: _Optional[_Union[Policy, _Mapping]] = ..., document: _Optional[str] = ..., node_name: _Optional[str] = ..., disassemble: _Optional[bool] = ...) -> None: ...

class CompilePolicyResponse(_message.Message):
    __slots__ = ("programs", "maps", "digest", "elf_size", "warnings", "disassembly")
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ELF_SIZE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DISASSEMBLY_FIELD_NUMBER: _ClassVar[int]
    programs: _containers.RepeatedCompositeFieldContainer[ProgramStats]
    maps: _containers.RepeatedCompositeFieldContainer[MapStats]
    digest: str
    elf_size: int
    warnings: _containers.RepeatedScalarFieldContainer[str]
    disassembly: str
    def __init__(self, programs: _Optional[_Iterable[_Union[ProgramStats, _Mapping]]] = ..., maps: _Optional[_Iterable[_Union[MapStats, _Mapping]]] = ..., digest: _Optional[str] = ..., elf_size: _Optional[int] = ..., warnings: _Optional[_Iterable[str]] = ..., disassembly: _Optional[str] = ...) -> None: ...

class ProgramStats(_message.Message):
    __slots__ = ("name", "section", "instructions", "max_path_jumps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_PATH_JUMPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    section: str
    instructions: int
    max_path_jumps: int
    def __init__(self, name: _Optional[str] = ..., section: _Optional[str] = ..., instructions: _Optional[int] = ..., max_path_jumps: _Optional[int] = ...) -> None: ...

class MapStats(_message.Message):
    __slots__ = ("name", "kind", "key_size", "value_size", "max_entries", "entries", "bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    key_size: int
    value_size: int
    max_entries: int
    entries: int
    bytes: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., key_size: _Optional[int] = ..., value_size: _Optional[int] = ..., max_entries: _Optional[int] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...
