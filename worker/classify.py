"""All retry policy in one place: what an exception means for the task and its message.

- `Retry`: leave the message in the queue and let it reappear after a jittered,
  growing backoff (its visibility, from `RetryPolicy`); the queue's redrive sends
  a message that keeps failing to the dead-letter queue.
- `FailTask`: SendTaskFailure with a contract error name; retrying would not help.
- `DeadLetter`: the message is not a task at all; leave it for the dead-letter queue.

`RetryPolicy.decide` is what the consumer asks: `classify` plus the delay of a
retry; `RetryPolicy.receive_error_delay_s` paces the consumer after a failed
receive. Retries inside the SDK clients are the profiles of `paystep_common.retry`.

Nothing is failed that a retry could fix, and nothing a person must look at is
failed silently: errors of our own configuration (a bad API key) retry into the
dead-letter queue rather than failing customers' payments.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import stripe
from botocore.exceptions import BotoCoreError, ClientError

from statemachine import causes
from statemachine.callbacks import CallbackError
from statemachine.card_budget import BudgetContention
from worker.errors import PoisonMessage, TaskFailure

# https://docs.stripe.com/error-codes: answers that a later attempt can change.
TRANSIENT_STRIPE_CODES: Final = frozenset(
    {
        "lock_timeout",
        "rate_limit",
        "idempotency_key_in_use",
        # A state race (a cancel meeting a payment that just succeeded): the retry re-reads
        # the PaymentIntent and sees where it ended.
        "payment_intent_unexpected_state",
    }
)
TRANSIENT_HTTP_STATUSES: Final = frozenset({409, 429})


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    expected: bool = True
    """False for errors nobody planned for: logged with their traceback."""
    delay_s: int = 0
    """Seconds until the message reappears (its visibility); `RetryPolicy.decide` sets it."""


@dataclass(frozen=True, slots=True)
class FailTask:
    error: str
    cause: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str


Decision = Retry | FailTask | DeadLetter


def classify(exc: BaseException) -> Decision:
    """The one decision: retry later, fail the task, or leave the message for the DLQ."""
    match exc:
        case PoisonMessage():
            return DeadLetter(exc.reason)
        case TaskFailure():
            return _fail(exc.failure)
        case stripe.CardError():
            return _fail(causes.declined(payment_intent_id(exc), exc.error))
        case stripe.StripeError():
            return _classify_stripe(exc)
        case CallbackError():
            return Retry(f"step functions: {exc}")
        case BudgetContention():
            # Many executions of one card at once: the count is atomic, only slower.
            return Retry(f"card budget: {exc}")
        case BotoCoreError() | ClientError():
            return Retry(f"aws: {exc}")
        case TimeoutError() | OSError():
            return Retry(f"network: {type(exc).__name__}: {exc}")
        case _:
            return Retry(f"unexpected {type(exc).__name__}: {exc}", expected=False)


def _classify_stripe(exc: stripe.StripeError) -> Decision:
    code = _code(exc)
    status = exc.http_status or 0
    match exc:
        case stripe.APIConnectionError():
            return Retry("stripe: connection failed")
        case stripe.RateLimitError():
            return Retry("stripe: rate limited (429)")
        case stripe.AuthenticationError() | stripe.PermissionError():
            # Our key is wrong or lacks a permission: every payment would fail the same way.
            # Retry until someone fixes the configuration (the DLQ keeps the rest).
            return Retry(f"stripe: {type(exc).__name__} ({status}); check the API key")
        case stripe.IdempotencyError():
            # Same key, other parameters: a deploy changed how a task maps to the request
            # while its key was still stored. Failing the payment would punish the customer
            # for it; the retry outlives the key (24 h) or ends in the DLQ.
            return Retry("stripe: idempotency key reused with other parameters")
        case _ if code in TRANSIENT_STRIPE_CODES or status in TRANSIENT_HTTP_STATUSES:
            return Retry(f"stripe: {code or status}")
        case _ if status >= 500 or status == 0:
            return Retry(f"stripe: server error {status}")
        case stripe.InvalidRequestError():
            return _fail(causes.rejected(payment_intent_id(exc), exc.error))
        case _:
            return Retry(f"stripe: {type(exc).__name__} ({status})", expected=False)


def _code(exc: stripe.StripeError) -> str | None:
    # stripe-python sets `.code` on InvalidRequestError and CardError only; the error
    # object carries it for every status (409 lock_timeout arrives as APIError).
    if exc.error is not None and exc.error.code:
        return str(exc.error.code)
    return exc.code


def payment_intent_id(exc: stripe.StripeError) -> str | None:
    """The PaymentIntent a confirm created before it failed, when there is one."""
    intent = exc.error.payment_intent if exc.error is not None else None
    return intent.id if intent is not None else None


def _fail(failure: causes.Failure) -> FailTask:
    return FailTask(failure.error, failure.cause)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Visibility delay before retry number n: base * 2**(n-1), capped, with equal jitter.

    Half the delay is fixed so a retry never comes back at once; the other half is
    random so a burst of failures (a Stripe outage) does not return as one burst.
    """

    base_s: float
    max_s: float
    random: Callable[[], float] = random.random

    def delay_s(self, receive_count: int) -> int:
        exponent = min(max(receive_count, 1) - 1, 30)
        ceiling = min(self.max_s, self.base_s * (1 << exponent))
        # SQS visibility is whole seconds; at least one so a failing task cannot spin.
        return max(1, round(ceiling / 2 + self.random() * ceiling / 2))


# A failing ReceiveMessage (SQS or the network down) is retried by the consumer after
# this pause, growing with consecutive failures, so the loop neither spins nor stalls.
RECEIVE_ERROR_BACKOFF: Final = Backoff(base_s=1.0, max_s=30.0)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When the consumer tries again: a task by its receive count, a receive by failed receives."""

    task_backoff: Backoff
    receive_backoff: Backoff = RECEIVE_ERROR_BACKOFF

    def decide(self, exc: BaseException, receive_count: int) -> Decision:
        """`classify(exc)`, a retry carrying its visibility delay for this receive."""
        decision = classify(exc)
        if isinstance(decision, Retry):
            return replace(decision, delay_s=self.task_backoff.delay_s(receive_count))
        return decision

    def receive_error_delay_s(self, consecutive_failures: int) -> int:
        return self.receive_backoff.delay_s(consecutive_failures)
