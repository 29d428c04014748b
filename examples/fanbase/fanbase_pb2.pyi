from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FanbaseEvent(_message.Message):
    __slots__ = ("fan", "talent", "action")
    FAN_FIELD_NUMBER: _ClassVar[int]
    TALENT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    fan: str
    talent: str
    action: str
    def __init__(self, fan: _Optional[str] = ..., talent: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...
