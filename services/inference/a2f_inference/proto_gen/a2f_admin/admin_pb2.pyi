from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "identities", "version", "engine_backend", "engine_fingerprint", "state", "open_streams", "is_default", "error", "lookahead_s", "max_batch", "loading_version", "waiting_version", "waiting_reason", "versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_BACKEND_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    LOADING_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    identities: _containers.RepeatedScalarFieldContainer[str]
    version: str
    engine_backend: str
    engine_fingerprint: str
    state: str
    open_streams: int
    is_default: bool
    error: str
    lookahead_s: float
    max_batch: int
    loading_version: str
    waiting_version: str
    waiting_reason: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionStreams]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., identities: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ..., engine_backend: _Optional[str] = ..., engine_fingerprint: _Optional[str] = ..., state: _Optional[str] = ..., open_streams: _Optional[int] = ..., is_default: _Optional[bool] = ..., error: _Optional[str] = ..., lookahead_s: _Optional[float] = ..., max_batch: _Optional[int] = ..., loading_version: _Optional[str] = ..., waiting_version: _Optional[str] = ..., waiting_reason: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionStreams, _Mapping]]] = ...) -> None: ...

class VersionStreams(_message.Message):
    __slots__ = ("version", "state", "open_streams")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OPEN_STREAMS_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: str
    open_streams: int
    def __init__(self, version: _Optional[str] = ..., state: _Optional[str] = ..., open_streams: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
