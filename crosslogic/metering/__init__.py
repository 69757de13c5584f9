"""Metering: the usage ledger (always on), written off the hot path, and usage reports."""

from crosslogic.metering.recorder import UsageRecorder
from crosslogic.metering.records import UsageRecord, UsageStatus

__all__ = ["UsageRecord", "UsageRecorder", "UsageStatus"]
