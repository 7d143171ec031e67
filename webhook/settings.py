"""Settings of the webhook process, read once from `PAYSTEP_*` variables in `main()`."""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from paystep_common.retry import CALLBACKS_WEBHOOK
from paystep_common.settings import (
    SNS_TOPIC_ARN,
    CardBudgetSettings,
    TokenKeySettings,
    stripe_key_mode,
)

# Stripe events are a few KiB; a PaymentIntent with 50 metadata values of 500
# characters stays far below this. Anything larger is not from Stripe.
DEFAULT_MAX_BODY_BYTES: Final = 512 * 1024
# https://docs.stripe.com/webhooks#verify-manually: Stripe's default tolerance.
DEFAULT_SIGNATURE_TOLERANCE_S: Final = 300

Mode = Literal["live", "test"]
# https://docs.aws.amazon.com/step-functions/latest/apireference/API_CreateStateMachine.html
_STATE_MACHINE_ARN: Final = re.compile(
    r"arn:aws[a-z-]*:states:[a-z0-9-]+:[0-9]{12}:stateMachine:[A-Za-z0-9_-]{1,80}"
)


class EventSettings(TokenKeySettings, CardBudgetSettings):
    """Settings of what turns Stripe events into callbacks: the webhook and reconciliation.

    `PAYSTEP_STATE_MACHINE_ARN` says which executions are ours: a Stripe account can
    serve several deployments, and the others' events are not for us to resume.
    `PAYSTEP_QUEUE_URL` is the worker's task queue, `PAYSTEP_NOTIFICATIONS_TOPIC_ARN` the
    customers' notifications topic; a decline is counted against its card
    (`PAYSTEP_CARD_ATTEMPTS_TABLE`) by whoever sees it first.
    """

    state_machine_arn: str
    # The worker's task queue: a successful payment whose task is closed is sent there as
    # a `check_payment` task, for the worker to keep or refund.
    queue_url: str = Field(pattern=r"^https?://\S+$")
    # The stack's notifications topic: a decline only the customer can fix is published
    # there (`payment_action_required`) while the execution waits for them.
    notifications_topic_arn: str = Field(pattern=SNS_TOPIC_ARN)

    @field_validator("state_machine_arn")
    @classmethod
    def _is_a_state_machine(cls, value: str) -> str:
        if not _STATE_MACHINE_ARN.fullmatch(value):
            raise ValueError("expected arn:aws:states:<region>:<account>:stateMachine:<name>")
        return value


class WebhookSettings(EventSettings):
    """`PAYSTEP_WEBHOOK_SECRETS` holds every secret that is valid now (rotation)."""

    # A comma-separated string: pydantic-settings would otherwise expect JSON for a list.
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode] = Field(min_length=1)
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(default=8080, ge=1, le=65_535)
    metrics_port: int = Field(default=9090, ge=1, le=65_535)
    webhook_max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    webhook_signature_tolerance_s: int = Field(default=DEFAULT_SIGNATURE_TOLERANCE_S, ge=1)
    # Only used to tell live from test mode; the webhook never calls Stripe.
    stripe_api_key: SecretStr | None = None
    webhook_livemode: bool | None = None
    # Tune the CALLBACKS_WEBHOOK profile: attempts per Step Functions call (the first
    # included) and the connect / read timeout of each.
    webhook_sfn_attempts: int = Field(default=CALLBACKS_WEBHOOK.total_attempts, ge=1, le=10)
    webhook_sfn_timeout_s: float = Field(default=CALLBACKS_WEBHOOK.read_timeout_s, gt=0)
    webhook_ready_cache_s: float = Field(default=5.0, ge=0)
    webhook_shutdown_grace_s: float = Field(default=20.0, gt=0)

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _look_like_stripe_secrets(cls, secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for index, secret in enumerate(secrets):
            if not secret.get_secret_value().startswith("whsec_"):
                raise ValueError(f"secret {index + 1} does not start with whsec_")
        return secrets

    @property
    def expected_mode(self) -> Mode | None:
        """The mode events must be in, `None` when nothing says (both accepted)."""
        if self.webhook_livemode is not None:
            return "live" if self.webhook_livemode else "test"
        if self.stripe_api_key is not None:
            return stripe_key_mode(self.stripe_api_key)
        return None
