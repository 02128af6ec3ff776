from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetKeyPolicyRequest(_message.Message):
    __slots__ = ("key_id", "policy_name")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    policy_name: str
    def __init__(self, key_id: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class GetKeyPolicyResponse(_message.Message):
    __slots__ = ("key_arn", "policy_name", "policy", "etag")
    KEY_ARN_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key_arn: str
    policy_name: str
    policy: str
    etag: str
    def __init__(self, key_arn: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class PutKeyPolicyRequest(_message.Message):
    __slots__ = ("key_id", "policy_name", "policy", "bypass_policy_lockout_safety_check", "validate_only", "etag")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BYPASS_POLICY_LOCKOUT_SAFETY_CHECK_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    policy_name: str
    policy: str
    bypass_policy_lockout_safety_check: bool
    validate_only: bool
    etag: str
    def __init__(self, key_id: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy: _Optional[str] = ..., bypass_policy_lockout_safety_check: _Optional[bool] = ..., validate_only: _Optional[bool] = ..., etag: _Optional[str] = ...) -> None: ...

class PutKeyPolicyResponse(_message.Message):
    __slots__ = ("key_arn", "policy_name", "etag")
    KEY_ARN_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    key_arn: str
    policy_name: str
    etag: str
    def __init__(self, key_arn: _Optional[str] = ..., policy_name: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class ListKeyPoliciesRequest(_message.Message):
    __slots__ = ("key_id", "page_size", "page_token")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    page_size: int
    page_token: str
    def __init__(self, key_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListKeyPoliciesResponse(_message.Message):
    __slots__ = ("policy_names", "next_page_token")
    POLICY_NAMES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    policy_names: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    def __init__(self, policy_names: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ValidateKeyPolicyRequest(_message.Message):
    __slots__ = ("key_id", "policy", "policy_name")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    policy: str
    policy_name: str
    def __init__(self, key_id: _Optional[str] = ..., policy: _Optional[str] = ..., policy_name: _Optional[str] = ...) -> None: ...

class ValidateKeyPolicyResponse(_message.Message):
    __slots__ = ("findings",)
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    def __init__(self, findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("severity", "code", "path", "message")
    class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SEVERITY_UNSPECIFIED: _ClassVar[Finding.Severity]
        SEVERITY_ERROR: _ClassVar[Finding.Severity]
        SEVERITY_WARNING: _ClassVar[Finding.Severity]
    SEVERITY_UNSPECIFIED: Finding.Severity
    SEVERITY_ERROR: Finding.Severity
    SEVERITY_WARNING: Finding.Severity
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: Finding.Severity
    code: str
    path: str
    message: str
    def __init__(self, severity: _Optional[_Union[Finding.Severity, str]] = ..., code: _Optional[str] = ..., path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
