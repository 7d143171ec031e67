"""The pacer of Stripe calls, on an injected clock: pace, cuts, probing, a fleet at the limit."""

from __future__ import annotations

import heapq

import pytest
import stripe

from paystep_local.stripe_rate_limits import StripeRateLimits
from worker.limiter import (
    CUT_PER_REFUSAL_PER_S,
    MAX_CUT,
    UNNAMED_LIMITER,
    Budget,
    Pacer,
    refusal,
)

CREATE = "payment_intents.create"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _window(pacer: Pacer, clock: Clock, *, sent: int, refused: int) -> None:
    """One window: `sent` calls started and answered in it, `refused` of them 429.

    The calls start evenly over the window whatever the pace: the window closes once.
    """
    end = clock.now + pacer.window_s
    for index in range(sent):
        clock.now += 0.9 * pacer.window_s / sent
        pacer.finish(pacer.start(waited=True), refused=index < refused)
    clock.now = max(clock.now, end)
    pacer.finish(-1, refused=False)  # any later answer closes the window


async def test_calls_start_one_every_1_over_rate_in_order() -> None:
    clock = Clock()
    budget = Budget(account_per_s=100, endpoint_per_s=20, clock=clock, sleep=clock.sleep)
    began = clock.now
    started = []
    for _ in range(5):
        await budget.acquire(CREATE)
        started.append(round(clock.now - began, 6))
    assert started == [0.0, 0.05, 0.1, 0.15, 0.2]


def test_a_window_with_a_share_of_429s_cuts_the_rate_by_at_least_that_share() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    _window(pacer, clock, sent=20, refused=5)
    assert 20 * MAX_CUT < pacer.rate <= 15
    assert pacer.cuts == 1


def test_each_429_takes_half_a_call_a_second_off_at_once() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    first = pacer.start(waited=True)
    clock.now += 0.1
    pacer.finish(first, refused=True)
    assert pacer.rate == pytest.approx(20 - CUT_PER_REFUSAL_PER_S), "the window is too young"
    assert pacer.cuts == 0, "the window's own cut comes at its end"


def test_a_429_after_a_quarter_window_cuts_from_the_rate_the_pod_sends_at() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    epochs = []
    for _ in range(5):
        epochs.append(pacer.start(waited=False))
        clock.now += 0.1
    pacer.finish(epochs[0], refused=True)
    assert pacer.rate == pytest.approx(5 / 0.5 - CUT_PER_REFUSAL_PER_S)


def test_a_window_of_nothing_but_429s_cuts_deep_but_not_below_the_minimum() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    _window(pacer, clock, sent=20, refused=20)
    assert pacer.min_per_s <= pacer.rate <= 20 * MAX_CUT


def test_a_pod_that_sent_less_than_its_rate_is_cut_from_what_it_sent() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    _window(pacer, clock, sent=8, refused=2)
    assert pacer.rate == pytest.approx(8 * 0.75)


def test_429s_of_calls_started_before_a_cut_do_not_cut_again() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    first = [pacer.start(waited=True) for _ in range(10)]
    for epoch in first[:5]:
        pacer.finish(epoch, refused=True)
    clock.now += pacer.window_s
    pacer.finish(-1, refused=False)
    assert (pacer.cuts, pacer.rate) == (1, 5), "10 sent in the window, half refused"
    for epoch in first[5:]:
        pacer.finish(epoch, refused=True)
    clock.now += pacer.window_s
    pacer.finish(pacer.start(waited=True), refused=False)
    assert pacer.cuts == 1, "the late 429s belong to the window already judged"
    assert pacer.rate > 5


def test_windows_without_429s_probe_up_only_while_calls_wait_and_never_past_the_maximum() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    _window(pacer, clock, sent=20, refused=10)
    cut = pacer.rate
    assert cut <= 10
    idle = pacer.start(waited=False)
    clock.now += pacer.window_s
    pacer.finish(idle, refused=False)
    assert pacer.rate == pytest.approx(cut), "no call waited: no need for more"
    _window(pacer, clock, sent=10, refused=0)
    assert pacer.rate == pytest.approx(cut * (1 + pacer.probe_share) + pacer.probe_per_s)
    for _ in range(60):
        _window(pacer, clock, sent=10, refused=0)
    assert pacer.rate == 20, "growing faster the longer no 429 came, up to the maximum"


def test_a_slower_rate_applies_to_the_next_call_already() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=10, clock=clock)
    _window(pacer, clock, sent=10, refused=5)
    assert pacer.rate < 10
    clock.now += pacer.wait()
    pacer.start(waited=True)
    assert pacer.wait() == pytest.approx(1 / pacer.rate)


def _rate_limit(code: str = "rate_limit", **headers: str) -> stripe.RateLimitError:
    return stripe.RateLimitError("limited", http_status=429, headers=headers, code=code)


def test_the_reason_header_names_the_pacer_a_429_cuts() -> None:
    assert refusal(_rate_limit(**{"Stripe-Rate-Limited-Reason": "global-rate"})) == "global-rate"
    assert refusal(_rate_limit()) == UNNAMED_LIMITER
    assert refusal(_rate_limit(code="lock_timeout")) is None, "a lock, not a limit"


async def test_a_global_429_cuts_the_accounts_pace_an_endpoint_429_the_endpoints() -> None:
    clock = Clock()
    budget = Budget(account_per_s=20, endpoint_per_s=20, clock=clock, sleep=clock.sleep)
    for reason, cut in (
        ("global-rate", budget.account),
        ("endpoint-rate", budget.endpoint(CREATE)),
    ):
        tickets = [await budget.acquire(CREATE) for _ in range(20)]
        for index, ticket in enumerate(tickets):
            budget.release(ticket, refused_by=reason if index % 2 else None)
        clock.now += 1.0
        budget.release(await budget.acquire(CREATE), refused_by=None)
        assert cut.cuts == 1
    assert budget.account.cuts == budget.endpoint(CREATE).cuts == 1


@pytest.mark.parametrize("pods", [1, 2, 4])
def test_pods_that_never_talk_share_stripes_limit_and_follow_it_when_it_halves(pods: int) -> None:
    """A fleet against Stripe's buckets (200 ms answers), simulated on one clock."""
    clock = Clock()
    stripe_limits = StripeRateLimits(global_per_s=100, endpoint_per_s=25, clock=clock)
    pacers = [Pacer(max_per_s=25, clock=clock) for _ in range(pods)]
    answers: list[tuple[float, int, int, int, bool]] = []
    sent: list[tuple[float, bool]] = []
    began, step = clock.now, 0
    while clock.now - began < 60:
        if clock.now - began >= 30 and stripe_limits.state()["endpoint_per_s"] == 25:
            stripe_limits.configure(global_per_s=50, endpoint_per_s=12.5)
        while answers and answers[0][0] <= clock.now:
            _, _, pod, epoch, refused = heapq.heappop(answers)
            pacers[pod].finish(epoch, refused=refused)
        for pod, pacer in enumerate(pacers):
            if pacer.wait() == 0:
                epoch = pacer.start(waited=True)
                refused = stripe_limits.admit("POST /v1/payment_intents") is not None
                sent.append((clock.now - began, refused))
                step += 1
                heapq.heappush(answers, (clock.now + 0.2, step, pod, epoch, refused))
        clock.now = began + round(clock.now - began + 0.001, 6)

    def figures(start: float, end: float) -> tuple[float, float]:
        ok = sum(1 for at, refused in sent if start <= at < end and not refused)
        refused = sum(1 for at, refused in sent if start <= at < end and refused)
        return ok / (end - start), refused / ok

    rate, refused_per_payment = figures(10, 30)
    assert rate >= 0.95 * 25
    assert refused_per_payment <= 0.02
    rate, refused_per_payment = figures(35, 60)
    assert rate >= 0.95 * 12.5, "back at the halved limit within 5 s"
    assert refused_per_payment <= 0.02
    # The first 429s, when the bucket's burst is spent, cut at once: cutting only at the
    # window's end cost 0.016 / 0.052 / 0.109 429s per payment over this run.
    _, refused_per_payment = figures(0, 60)
    assert refused_per_payment <= {1: 0.015, 2: 0.045, 4: 0.095}[pods]
