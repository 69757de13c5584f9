"""What one alert is, as every sink receives it."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

# PagerDuty's Events v2 severities; the webhook carries the same words.
Severity = Literal["critical", "error", "warning", "info"]
AlertState = Literal["trigger", "resolve"]
# PagerDuty refuses a dedup_key over 255 characters.
MAX_DEDUP_KEY = 255


class Alert(BaseModel):
    # One alert kind ("loop_crashing", "model_unavailable"): what alerting rules and runbooks key on.
    name: str = Field(min_length=1)
    # Which instance of that kind ("" when there is only one): a model name, a loop name.
    key: str = ""
    state: AlertState = "trigger"
    severity: Severity = "error"
    summary: str = ""
    # Where it was raised: region/host, and the component (ingress, billing) inside it.
    source: str = ""
    component: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    # Minted per alert so a receiver can drop the copy a retry delivers twice.
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def dedup_key(self) -> str:
        """The incident's identity across trigger and resolve (PagerDuty's dedup_key)."""
        text = f"crosslogic/{self.name}/{self.key}" if self.key else f"crosslogic/{self.name}"
        if len(text) <= MAX_DEDUP_KEY:
            return text
        # A key too long for PagerDuty: stable digest, so the resolve still matches the trigger.
        digest = hashlib.sha256(text.encode()).hexdigest()
        return f"crosslogic/{self.name[:100]}/sha256:{digest}"

    @field_validator("details", mode="before")
    @classmethod
    def _json_safe(cls, details: Any) -> Any:
        # Details come from whatever the caller had at hand (exceptions, records): make them JSON once,
        # here, so no sink fails on an unserialisable value.
        if not isinstance(details, dict):
            return details
        return json.loads(json.dumps(details, default=str))
