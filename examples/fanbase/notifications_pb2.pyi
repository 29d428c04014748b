from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class NotificationSent(_message.Message):
    __slots__ = ("notification", "channel", "topic", "recipient", "address", "subject", "provider_id", "fan", "talent", "sent_at_ms")
    NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    FAN_FIELD_NUMBER: _ClassVar[int]
    TALENT_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_MS_FIELD_NUMBER: _ClassVar[int]
    notification: str
    channel: str
    topic: str
    recipient: str
    address: str
    subject: str
    provider_id: str
    fan: str
    talent: str
    sent_at_ms: int
    def __init__(self, notification: _Optional[str] = ..., channel: _Optional[str] = ..., topic: _Optional[str] = ..., recipient: _Optional[str] = ..., address: _Optional[str] = ..., subject: _Optional[str] = ..., provider_id: _Optional[str] = ..., fan: _Optional[str] = ..., talent: _Optional[str] = ..., sent_at_ms: _Optional[int] = ...) -> None: ...
