from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hook(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOOK_UNSPECIFIED: _ClassVar[Hook]
    HOOK_CGROUP_CONNECT4: _ClassVar[Hook]
    HOOK_CGROUP_CONNECT6: _ClassVar[Hook]
    HOOK_LSM_SOCKET_CONNECT: _ClassVar[Hook]
    HOOK_CGROUP_BIND4: _ClassVar[Hook]
    HOOK_CGROUP_BIND6: _ClassVar[Hook]
    HOOK_LSM_SOCKET_BIND: _ClassVar[Hook]
    HOOK_LSM_BPRM_CHECK_SECURITY: _ClassVar[Hook]
    HOOK_LSM_FILE_OPEN: _ClassVar[Hook]
    HOOK_SOCK_OPS: _ClassVar[Hook]

class MapRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MAP_ROLE_UNSPECIFIED: _ClassVar[MapRole]
    MAP_ROLE_STATIC: _ClassVar[MapRole]
    MAP_ROLE_CGROUPS: _ClassVar[MapRole]
    MAP_ROLE_EVENTS: _ClassVar[MapRole]
    MAP_ROLE_COUNTERS: _ClassVar[MapRole]
    MAP_ROLE_SHARED: _ClassVar[MapRole]
HOOK_UNSPECIFIED: Hook
HOOK_CGROUP_CONNECT4: Hook
HOOK_CGROUP_CONNECT6: Hook
HOOK_LSM_SOCKET_CONNECT: Hook
HOOK_CGROUP_BIND4: Hook
HOOK_CGROUP_BIND6: Hook
HOOK_LSM_SOCKET_BIND: Hook
HOOK_LSM_BPRM_CHECK_SECURITY: Hook
HOOK_LSM_FILE_OPEN: Hook
HOOK_SOCK_OPS: Hook
MAP_ROLE_UNSPECIFIED: MapRole
MAP_ROLE_STATIC: MapRole
MAP_ROLE_CGROUPS: MapRole
MAP_ROLE_EVENTS: MapRole
MAP_ROLE_COUNTERS: MapRole
MAP_ROLE_SHARED: MapRole

class BundleContent(_message.Message):
    __slots__ = ("format", "elf", "programs", "maps", "policies", "rules", "cgroups")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ELF_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    CGROUPS_FIELD_NUMBER: _ClassVar[int]
    format: int
    elf: bytes
    programs: _containers.RepeatedCompositeFieldContainer[BundleProgram]
    maps: _containers.RepeatedCompositeFieldContainer[BundleMap]
    policies: _containers.RepeatedCompositeFieldContainer[BundlePolicy]
    rules: _containers.RepeatedCompositeFieldContainer[BundleRule]
    cgroups: _containers.RepeatedCompositeFieldContainer[BundleCgroup]
    def __init__(self, format: _Optional[int] = ..., elf: _Optional[bytes] = ..., programs: _Optional[_Iterable[_Union[BundleProgram, _Mapping]]] = ..., maps: _Optional[_Iterable[_Union[BundleMap, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[BundlePolicy, _Mapping]]] = ..., rules: _Optional[_Iterable[_Union[BundleRule, _Mapping]]] = ..., cgroups: _Optional[_Iterable[_Union[BundleCgroup, _Mapping]]] = ...) -> None: ...

class BundleProgram(_message.Message):
    __slots__ = ("name", "section", "hook", "instructions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    section: str
    hook: Hook
    instructions: int
    def __init__(self, name: _Optional[str] = ..., section: _Optional[str] = ..., hook: _Optional[_Union[Hook, str]] = ..., instructions: _Optional[int] = ...) -> None: ...

class BundleMap(_message.Message):
    __slots__ = ("name", "role", "map_type", "key_size", "value_size", "max_entries", "entries", "indices", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAP_TYPE_FIELD_NUMBER: _ClassVar[int]
    KEY_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: MapRole
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    entries: _containers.RepeatedCompositeFieldContainer[MapEntry]
    indices: _containers.RepeatedScalarFieldContainer[int]
    values: bytes
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[MapRole, str]] = ..., map_type: _Optional[int] = ..., key_size: _Optional[int] = ..., value_size: _Optional[int] = ..., max_entries: _Optional[int] = ..., entries: _Optional[_Iterable[_Union[MapEntry, _Mapping]]] = ..., indices: _Optional[_Iterable[int]] = ..., values: _Optional[bytes] = ...) -> None: ...

class MapEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class BundlePolicy(_message.Message):
    __slots__ = ("name", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class BundleRule(_message.Message):
    __slots__ = ("policy", "rule_id")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    policy: int
    rule_id: str
    def __init__(self, policy: _Optional[int] = ..., rule_id: _Optional[str] = ...) -> None: ...

class BundleCgroup(_message.Message):
    __slots__ = ("path", "level", "map")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    path: str
    level: int
    map: str
    def __init__(self, path: _Optional[str] = ..., level: _Optional[int] = ..., map: _Optional[str] = ..., **kwargs) -> None: ...
