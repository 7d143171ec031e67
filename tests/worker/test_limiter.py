"""The pacer of Stripe calls, on an injected clock: pace, cuts, probing, a fleet at the limit."""

from __future__ import annotations

import heapq
import random

import pytest
import stripe

from paystep_common.limiter import (
    CLIMB_GAP,
    CLIMB_TO,
    CUT_PER_REFUSAL_PER_S,
    FORGET_AFTER,
    MAX_CUT,
    MIN_ANSWERS,
    SLOW_PROBE,
    SPEED_UP_EVERY,
    UNNAMED_LIMITER,
    Budget,
    Pacer,
    refusal,
)
from paystep_local.stripe_rate_limits import StripeRateLimits

CREATE = "payment_intents.create"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def _window(
    pacer: Pacer, clock: Clock, *, sent: int, refused: int, refused_last: bool = False
) -> None:
    """One window: `sent` calls started and answered in it, `refused` of them 429.

    The calls start evenly over the window whatever the pace: the window closes once.
    The refused calls are the first ones, or the last ones with `refused_last`.
    """
    end = clock.now + pacer.window_s
    for index in range(sent):
        clock.now += 0.9 * pacer.window_s / sent
        late = index >= sent - refused
        pacer.finish(pacer.start(waited=True), refused=late if refused_last else index < refused)
    clock.now = max(clock.now, end)
    pacer.finish(-1, refused=False)  # any later answer closes the window


def _cut(*, refused: int) -> tuple[Clock, Pacer]:
    """A pacer of 20/s after one window of 20 calls, `refused` of them 429."""
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    _window(pacer, clock, sent=20, refused=refused)
    return clock, pacer


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
    first = [pacer.start(waited=True) for _ in range(20)]
    for index, epoch in enumerate(first[:10]):
        pacer.finish(epoch, refused=index < 5)
    clock.now += pacer.window_s
    pacer.finish(-1, refused=False)
    assert (pacer.cuts, pacer.rate) == (1, 10), "20 sent in the window, half of 10 answers 429"
    for epoch in first[10:]:
        pacer.finish(epoch, refused=True)
    _window(pacer, clock, sent=10, refused=0)
    assert pacer.cuts == 1, "the late 429s belong to the window already judged"
    assert pacer.rate > 10


def test_a_window_closes_only_once_it_holds_8_answers() -> None:
    clock = Clock()
    pacer = Pacer(max_per_s=20, clock=clock)
    _window(pacer, clock, sent=MIN_ANSWERS - 1, refused=3)
    assert pacer.cuts == 0, "7 answers say too little of the share refused"
    pacer.finish(pacer.start(waited=True), refused=False)
    assert pacer.cuts == 1


def test_windows_without_429s_probe_up_only_while_calls_wait() -> None:
    clock, pacer = _cut(refused=10)
    cut = pacer.rate
    assert cut <= 10
    idle = [pacer.start(waited=False) for _ in range(MIN_ANSWERS)]
    clock.now += pacer.window_s
    for epoch in idle:
        pacer.finish(epoch, refused=False)
    assert pacer.rate == pytest.approx(cut), "no call waited: no need for more"
    _window(pacer, clock, sent=10, refused=0)
    assert pacer.rate > cut


def test_after_a_cut_the_probe_goes_at_half_speed_until_20_clean_windows_forget_the_plateau() -> (
    None
):
    clock, pacer = _cut(refused=4)
    assert pacer.plateau == pytest.approx(pacer.rate) == pytest.approx(16), "a fifth refused"
    for _ in range(FORGET_AFTER):
        before = pacer.rate
        _window(pacer, clock, sent=20, refused=0)
        half = before * (1 + pacer.probe_share * SLOW_PROBE) + pacer.probe_per_s * SLOW_PROBE
        assert pacer.rate == pytest.approx(half)
    assert pacer.plateau == pytest.approx(16)
    before = pacer.rate
    _window(pacer, clock, sent=20, refused=0)
    assert pacer.plateau is None
    assert pacer.rate == pytest.approx(before * (1 + pacer.probe_share) + pacer.probe_per_s)


def test_without_a_plateau_the_probe_speeds_up_the_longer_no_429_came_up_to_the_maximum() -> None:
    clock, pacer = _cut(refused=10)
    for _ in range(FORGET_AFTER + 1):
        _window(pacer, clock, sent=10, refused=0)
    assert pacer.plateau is None
    steps = []
    for _ in range(2 * SPEED_UP_EVERY):
        before = pacer.rate
        _window(pacer, clock, sent=10, refused=0)
        steps.append((pacer.rate - pacer.probe_per_s) / before - 1)
    assert steps == sorted(steps)
    assert steps[-1] >= 2 * steps[0]
    for _ in range(60):
        _window(pacer, clock, sent=10, refused=0)
    assert pacer.rate == 20


def test_a_lone_429_below_the_plateau_keeps_it_once_and_the_climb_back_is_fast() -> None:
    clock, pacer = _cut(refused=4)
    plateau = pacer.plateau
    assert plateau is not None
    # A pod with less work than its pace: 10 calls, the last one refused.
    _window(pacer, clock, sent=10, refused=1, refused_last=True)
    assert (pacer.cuts, pacer.plateau) == (1, plateau), "the bucket not yet refilled"
    cut = pacer.rate
    assert cut < 0.9 * plateau, "the 429 still took its half call off what the pod sent"
    _window(pacer, clock, sent=10, refused=0)
    assert pacer.rate == pytest.approx(cut + CLIMB_GAP * (CLIMB_TO * plateau - cut))
    _window(pacer, clock, sent=10, refused=1, refused_last=True)
    assert pacer.cuts == 2, "a second lone 429 says the plateau was too high"
    assert pacer.plateau is not None
    assert pacer.plateau < plateau


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


def _fleet(
    pods: int, *, halve_at: float, end: float, jitter_s: float = 0.0
) -> list[tuple[float, bool]]:
    """Pods against Stripe's buckets, simulated on one clock: (sent at, refused) per call.

    Answers take 200 ms plus up to `jitter_s` (seeded: the same run every time); at
    `halve_at` both limits halve.
    """
    clock = Clock()
    delays = random.Random(pods)
    stripe_limits = StripeRateLimits(global_per_s=100, endpoint_per_s=25, clock=clock)
    pacers = [Pacer(max_per_s=25, clock=clock) for _ in range(pods)]
    answers: list[tuple[float, int, int, int, bool]] = []
    sent: list[tuple[float, bool]] = []
    began, step = clock.now, 0
    while clock.now - began < end:
        if clock.now - began >= halve_at and stripe_limits.state()["endpoint_per_s"] == 25:
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
                answer_at = clock.now + 0.2 + delays.random() * jitter_s
                heapq.heappush(answers, (answer_at, step, pod, epoch, refused))
        clock.now = began + round(clock.now - began + 0.001, 6)
    return sent


def _figures(sent: list[tuple[float, bool]], start: float, end: float) -> tuple[float, float]:
    """Created/s and 429s per payment among the calls sent in [start, end)."""
    ok = sum(1 for at, refused in sent if start <= at < end and not refused)
    refused = sum(1 for at, refused in sent if start <= at < end and refused)
    return ok / (end - start), refused / max(ok, 1)


@pytest.mark.parametrize("pods", [1, 2, 4])
def test_pods_that_never_talk_share_stripes_limit_and_follow_it_when_it_halves(pods: int) -> None:
    sent = _fleet(pods, halve_at=30, end=60)
    rate, refused_per_payment = _figures(sent, 10, 30)
    assert rate >= 0.95 * 25
    assert refused_per_payment <= 0.02
    rate, refused_per_payment = _figures(sent, 35, 60)
    assert rate >= 0.95 * 12.5, "back at the halved limit within 5 s"
    assert refused_per_payment <= 0.02
    # The first 429s, when the bucket's burst is spent, cut at once: cutting only at the
    # window's end cost 0.016 / 0.052 / 0.109 429s per payment over this run (0.013 /
    # 0.035 / 0.081 when the window's cut came on top of them, but left the fleet below
    # a halved limit).
    _, refused_per_payment = _figures(sent, 0, 60)
    assert refused_per_payment <= {1: 0.015, 2: 0.055, 4: 0.115}[pods]


@pytest.mark.parametrize("pods", [1, 2, 4])
def test_after_the_limit_halves_the_cuts_do_not_stack_below_it(pods: int) -> None:
    """From 5 s after the halving every 2 s holds 90 % of the new limit, with few 429s.

    Cutting a window's share from a rate its own 429s had already cut left 2 pods at
    84-92 % of the halved limit for the next 10 s, climbing back only with the probe.
    """
    sent = _fleet(pods, halve_at=20, end=40, jitter_s=0.05)
    for start in range(25, 39):
        rate, _ = _figures(sent, start, start + 2)
        assert rate >= 0.9 * 12.5, f"{rate}/s in the 2 s from {start} s"
    _, refused_per_payment = _figures(sent, 25, 40)
    assert refused_per_payment <= 0.02
