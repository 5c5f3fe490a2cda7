"""Call records, their storage (SQLite, PostgreSQL) and the webhook outbox."""

from __future__ import annotations

from .migrations import SCHEMA_VERSION, SchemaTooNew
from .model import CallRecord, CallResult, CallType, LeaveReason, MemberRecord
from .store import RecordQuery, RecordStore, StoreError, open_store
from .tracker import Cause, RecordTracker, WebhookEvent, Write
from .webhooks import WebhookDeliverer, sign, verify
from .writer import RecordWriter

__all__ = [
    "SCHEMA_VERSION",
    "CallRecord",
    "CallResult",
    "CallType",
    "Cause",
    "LeaveReason",
    "MemberRecord",
    "RecordQuery",
    "RecordStore",
    "RecordTracker",
    "RecordWriter",
    "SchemaTooNew",
    "StoreError",
    "WebhookDeliverer",
    "WebhookEvent",
    "Write",
    "open_store",
    "sign",
    "verify",
]
