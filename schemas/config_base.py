"""The base of every configuration section: unknown keys are errors, so a typo stops the run at start-up."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
