"""Settings shared by every paystep process, read once from `PAYSTEP_*` variables.

AWS settings (region, endpoint, credentials) deliberately stay in the standard AWS
SDK environment; nothing here duplicates them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class PaystepSettings(BaseSettings):
    """Base of every process's settings: the `PAYSTEP_` prefix and logging."""

    model_config = SettingsConfigDict(env_prefix="PAYSTEP_", frozen=True, extra="ignore")

    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class StripeSettings(PaystepSettings):
    """Settings of a process that talks to Stripe."""

    stripe_api_key: SecretStr
    stripe_api_base: str | None = None
    stripe_timeout_s: float = 30.0
