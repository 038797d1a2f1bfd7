"""The contract between customer and vendor: what a session is (:mod:`.session`), the messages and their one
encoding (:mod:`.messages`), the documented limits (:mod:`.limits`) and the errors each side may raise
(:mod:`.errors`, no HTTP codes). Both roles, the transports and the attacks' view of the wire speak it."""

from splitpriv.contract.messages import (
    MAX_UNPACKED_ELEMENTS,
    MESSAGES,
    SESSION_HEADER,
    STEP_HEADER,
    WIRE_DTYPES,
    BackwardRequest,
    BackwardResult,
    DecodeRequest,
    ForwardRequest,
    Message,
    Outputs,
    PredictRequest,
    decode,
    message_summary,
    pack_files,
    pack_hidden,
    unpack_files,
    unpack_hidden,
)
from splitpriv.contract.session import DENOISERS, HEADS, ProtocolError, SessionConfig, SessionInfo

__all__ = [
    "BackwardRequest", "BackwardResult", "DecodeRequest", "DENOISERS", "ForwardRequest", "HEADS", "MESSAGES",
    "Message", "Outputs", "MAX_UNPACKED_ELEMENTS", "PredictRequest", "ProtocolError", "SESSION_HEADER",
    "STEP_HEADER", "SessionConfig", "SessionInfo", "WIRE_DTYPES", "decode", "message_summary", "pack_files",
    "pack_hidden", "unpack_files", "unpack_hidden",
]
