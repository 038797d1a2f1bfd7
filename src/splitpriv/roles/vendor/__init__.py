"""The vendor's role: the facade (:mod:`.vendor`), one session's state machine (:mod:`.session`), the checkpoint
store, idle eviction, leases and replicas, batching of tenants and of training forwards, the denoiser, and the
vendor's own adaptations before any customer (robust top, privatizer pre-training)."""

from splitpriv.roles.vendor.vendor import (
    CHECKPOINT_FORMAT,
    SESSIONS_DIR,
    TOP_DIR,
    SessionLimit,
    Vendor,
    VendorSession,
    check_representations,
    return_freed_memory,
    token_hash,
)

__all__ = ["CHECKPOINT_FORMAT", "SESSIONS_DIR", "TOP_DIR", "SessionLimit", "Vendor", "VendorSession",
           "check_representations", "return_freed_memory", "token_hash"]
