"""Settings shared by every paystep process, read once from `PAYSTEP_*` variables.

Every command reads its settings through `load_settings`, so a bad setting is
reported the same way everywhere: one line per variable, named as it is set in
the environment, and exit status 2, as for a bad argument.

AWS settings (region, endpoint, credentials) deliberately stay in the standard AWS
SDK environment; nothing here duplicates them.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    Field,
    SecretBytes,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from statemachine.card_budget import DAY_S, Budgets, Window
from statemachine.seal import TokenKeys

# https://docs.stripe.com/api-versions: `YYYY-MM-DD` or, since 2024-09-30, `YYYY-MM-DD.name`.
STRIPE_API_VERSION: Final = "2026-10-28.endive"
STRIPE_API_VERSION_PATTERN: Final = r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$"
# https://docs.aws.amazon.com/sns/latest/api/API_CreateTopic.html: names of 1-256 characters.
SNS_TOPIC_ARN: Final = r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$"
EXIT_BAD_SETTINGS: Final = 2  # the status argparse uses for bad arguments
_ECHO_MAX_CHARS: Final = 60
_EXPECTED: Final = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
}

S = TypeVar("S", bound="PaystepSettings")


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
    stripe_api_version: Annotated[str, StringConstraints(pattern=STRIPE_API_VERSION_PATTERN)] = (
        STRIPE_API_VERSION
    )
    """Sent as `Stripe-Version` on every call (https://docs.stripe.com/api/versioning): the
    requests are written for it, whatever the account's default. The version stripe-python
    in the lock is generated for; move both together."""


# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CreateTable.html
_TABLE_NAME: Final = r"^[A-Za-z0-9_.-]{3,255}$"


class OrderTablesSettings(PaystepSettings):
    """`PAYSTEP_ORDERS_TABLE` and `PAYSTEP_INVENTORY_TABLE`: the order's row and its stock."""

    orders_table: str = Field(pattern=_TABLE_NAME)
    inventory_table: str = Field(pattern=_TABLE_NAME)


def stripe_key_mode(key: SecretStr) -> Literal["live", "test"] | None:
    """The mode a Stripe secret or restricted key works in, by its documented prefix.

    https://docs.stripe.com/keys#obtain-api-keys; `None` for a key without one.
    """
    text = key.get_secret_value()
    if text.startswith(("sk_live_", "rk_live_")):
        return "live"
    if text.startswith(("sk_test_", "rk_test_")):
        return "test"
    return None


class TokenKeySettings(PaystepSettings):
    """Settings of a process that seals or opens task tokens: `PAYSTEP_TOKEN_KEYS`.

    `kid:base64key,...` (`paystep keygen` prints one); the first key seals, every one
    opens. A secret: never logged, never echoed in an error.
    """

    token_keys: SecretStr

    @field_validator("token_keys")
    @classmethod
    def _parses(cls, value: SecretStr) -> SecretStr:
        TokenKeys.parse(value.get_secret_value())
        return value

    @property
    def keyring(self) -> TokenKeys:
        return TokenKeys.parse(self.token_keys.get_secret_value())


class CardBudgetSettings(PaystepSettings):
    """Settings of a process that counts declined attempts per card (`PAYSTEP_CARD_ATTEMPTS_TABLE`).

    The card networks' limits on retries of one card are the defaults: Visa 15 in 30
    days, Mastercard 10 in 24 h and 35 in 30 days; other networks get Visa's, the
    stricter 30-day limit.
    """

    card_attempts_table: str = Field(min_length=3, max_length=255)
    retry_budget_visa_30d: int = Field(default=15, ge=1)
    retry_budget_mastercard_24h: int = Field(default=10, ge=1)
    retry_budget_mastercard_30d: int = Field(default=35, ge=1)
    retry_budget_other_30d: int = Field(default=15, ge=1)

    @property
    def budgets(self) -> Budgets:
        month = 30 * DAY_S
        return Budgets(
            by_brand={
                "visa": (Window(self.retry_budget_visa_30d, month),),
                "mastercard": (
                    Window(self.retry_budget_mastercard_24h, DAY_S),
                    Window(self.retry_budget_mastercard_30d, month),
                ),
            },
            other=(Window(self.retry_budget_other_30d, month),),
        )


class SettingsError(SystemExit):
    """The process cannot start with these settings: exit status 2.

    A `SystemExit`, so it ends the process from any entry point (`paystep ...`,
    `python -m worker`) without a traceback, and no `except Exception` swallows it.
    """

    def __init__(self, command: str, problems: Sequence[str]) -> None:
        super().__init__(EXIT_BAD_SETTINGS)
        self.command = command
        self.problems = tuple(problems)

    def report(self) -> str:
        """`paystep worker: PAYSTEP_QUEUE_URL: field required`, one line per problem."""
        return "".join(f"paystep {self.command}: {problem}\n" for problem in self.problems)


def load_settings(cls: type[S], command: str) -> S:
    """`cls` read from the environment; on a bad setting, report it and exit 2."""
    try:
        return cls()
    except ValidationError as exc:
        error = SettingsError(command, describe(cls, exc))
    sys.stderr.write(error.report())
    raise error


def env_name(cls: type[PaystepSettings], field: str) -> str:
    """The variable a field is read from: `queue_url` → `PAYSTEP_QUEUE_URL`."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def describe(cls: type[PaystepSettings], exc: ValidationError) -> list[str]:
    """One line per bad variable; the value is echoed unless the field holds a secret."""
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        info = cls.model_fields.get(field)
        secret = info is None or _holds_secret(info.annotation)
        text = _message(error)
        if not secret and isinstance(error["input"], str):
            text += f", got {error['input'][:_ECHO_MAX_CHARS]!r}"
        problems.append(f"{env_name(cls, field)}: {text}" if field else text)
    return problems


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "field required"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}"
    message = error["msg"].removeprefix("Value error, ")
    return message.replace("Input should be ", "should be ", 1)


def _holds_secret(annotation: Any) -> bool:
    if annotation in (SecretStr, SecretBytes):
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))
