"""The contract between kiosks, the cloud bridge and anyone integrating with them.

Topics, message models, rejection reasons and the signed code format live here and
nowhere else, so both sides of the wire can only disagree by importing different
versions of this package.
"""

from o2o_protocol.codes import (
    CODE_PREFIX,
    Code,
    CodeType,
    Rejected,
    extract_token,
    issue_code,
    key_id,
    verify_code,
)
from o2o_protocol.messages import (
    Ack,
    Command,
    CommandName,
    Event,
    EventType,
    ProtocolError,
    Reason,
    Status,
)

__all__ = [
    "CODE_PREFIX",
    "Ack",
    "Code",
    "CodeType",
    "Command",
    "CommandName",
    "Event",
    "EventType",
    "ProtocolError",
    "Reason",
    "Rejected",
    "Status",
    "extract_token",
    "issue_code",
    "key_id",
    "verify_code",
]

PROTOCOL_VERSION = "1"
