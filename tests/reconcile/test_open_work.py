"""Reconcile acts on what is unfinished, and only on that, at bounded rates.

GIVEN executions on the fake Step Functions and their PaymentIntents and events on the
fake Stripe (the worker's sealed metadata, the webhook's deliveries lost)
WHEN reconcile runs, and runs again
THEN the open tasks get their callback once, a task known closed gets none, heartbeats
go only to tasks still open and at most every `heartbeat_every_s`, an orphan payment
goes to the worker once, the next run lists from the checkpoint less the overlap, no
call is refused by the fakes' quotas, and one bad event or failed call is counted while
the run goes on.
"""

from __future__ import annotations

from paystep_local.fake_stripe import Fault
from tests.reconcile.conftest import NOW, Fakes, quotas
from webhook.checkpoint import task_key
from webhook.checks import CheckError


def _created_gte(fakes: Fakes, after: int = 0) -> set[int]:
    """The `created[gte]` of the event listings, from the `after`-th request on."""
    listed = fakes.stripe.requests("GET /v1/events")[after:]
    return {int(r.params["created"]["gte"]) for r in listed}


async def test_the_next_run_lists_from_the_checkpoint_less_the_overlap(fakes: Fakes) -> None:
    fakes.payments.add(status="SUCCEEDED", pi_status="succeeded", created=NOW - 3600)
    fakes.load()

    await fakes.run(now=NOW, reconcile_first_window_s=7200)
    assert _created_gte(fakes) == {NOW - 7200}
    assert fakes.checkpoints.saved is not None and fakes.checkpoints.saved.checkpoint == NOW

    # An event Stripe dated before the last run but that arrived after it: the overlap has it.
    arn, _ = fakes.payments.add(status="RUNNING", pi_status="succeeded", created=NOW - 60)
    fakes.load()
    before = len(fakes.stripe.requests("GET /v1/events"))
    summary = await fakes.run(now=NOW + 600, reconcile_overlap_s=300)

    assert _created_gte(fakes, before) == {NOW - 300}
    assert summary.callbacks_sent == 1
    assert fakes.store.executions[arn].status == "SUCCEEDED"


async def test_since_lists_its_window_whatever_the_checkpoint(fakes: Fakes) -> None:
    await fakes.run(now=NOW)
    before = len(fakes.stripe.requests("GET /v1/events"))

    await fakes.run(now=NOW + 600, since_s=86_400)

    assert _created_gte(fakes, before) == {NOW + 600 - 86_400}


async def test_each_open_task_gets_one_callback_and_a_second_run_sends_none(fakes: Fakes) -> None:
    for status in ("succeeded", "requires_payment_method", "canceled"):
        fakes.payments.add(status="RUNNING", pi_status=status, created=NOW - 600)
    for _ in range(5):
        fakes.payments.add(status="SUCCEEDED", pi_status="succeeded", created=NOW - 900)
    fakes.load()

    first = await fakes.run(now=NOW)
    assert (first.callbacks_sent, fakes.send_tasks(), fakes.store.on_ended) == (3, 3, 0)
    assert {e.status for e in fakes.store.executions.values()} == {"SUCCEEDED", "FAILED"}

    second = await fakes.run(now=NOW + 60)
    assert (second.callbacks_sent, second.already_closed, fakes.send_tasks()) == (0, 0, 3)


async def test_a_task_known_closed_gets_no_callback_while_its_execution_still_runs(
    fakes: Fakes,
) -> None:
    arn, _ = fakes.payments.add(status="RUNNING", pi_status="succeeded", created=NOW - 600)
    fakes.load()
    await fakes.run(now=NOW)
    assert fakes.send_tasks() == 1
    # The execution has not ended yet (its next states are still running).
    fakes.store.executions[arn].status = "RUNNING"

    again = await fakes.run(now=NOW + 60)

    assert (again.known_closed, again.callbacks_sent, fakes.send_tasks()) == (1, 0, 1)
    memory = fakes.checkpoints.saved
    assert memory is not None and memory.is_closed(task_key(arn, "1"))


async def test_a_task_found_closed_is_remembered_closed(fakes: Fakes) -> None:
    # The webhook answered it meanwhile: Step Functions says the task is closed, and the
    # execution is still running (a retry of the payment is being prepared).
    fakes.payments.add(status="RUNNING", pi_status="canceled", created=NOW - 600,
                       token="closed-" + "t" * 800)  # fmt: skip
    fakes.load()

    first = await fakes.run(now=NOW)
    second = await fakes.run(now=NOW + 60)

    assert (first.already_closed, second.known_closed, fakes.send_tasks()) == (1, 1, 1)


async def test_heartbeats_go_only_to_open_tasks_and_only_when_due(fakes: Fakes) -> None:
    open_arn, _ = fakes.payments.add(status="RUNNING", pi_status="processing", created=NOW - 600)
    fakes.payments.add(status="FAILED", pi_status="processing", created=NOW - 600)
    fakes.load()

    assert (await fakes.run(now=NOW, heartbeat=False)).heartbeats == 0
    first = await fakes.run(now=NOW + 10, reconcile_heartbeat_every_s=3600)
    soon = await fakes.run(now=NOW + 20, reconcile_heartbeat_every_s=3600)
    due = await fakes.run(now=NOW + 3610 + 20, reconcile_heartbeat_every_s=3600)

    assert (first.heartbeats, soon.heartbeats, due.heartbeats) == (1, 0, 1)
    assert fakes.store.answered["SendTaskHeartbeat"] == 2
    assert fakes.store.executions[open_arn].status == "RUNNING"


async def test_a_running_execution_without_a_recent_event_is_found_by_search(
    fakes: Fakes,
) -> None:
    arn, _ = fakes.payments.add(status="RUNNING", pi_status="succeeded", created=NOW - 5 * 86_400)
    fakes.load()

    summary = await fakes.run(now=NOW, reconcile_first_window_s=3600)

    assert summary.events_seen == 0
    assert fakes.stripe.requests("GET /v1/payment_intents/search")
    assert (summary.callbacks_sent, fakes.store.executions[arn].status) == (1, "SUCCEEDED")


async def test_an_orphan_payment_goes_to_the_worker_once(fakes: Fakes) -> None:
    _, orphan = fakes.payments.add(status="FAILED", pi_status="succeeded", created=NOW - 600)
    fakes.payments.add(status="SUCCEEDED", pi_status="succeeded", created=NOW - 600)
    fakes.load()

    first = await fakes.run(now=NOW)
    second = await fakes.run(now=NOW + 60)

    assert [task.payment_intent_id for task in fakes.recorder.checks] == [orphan]
    assert (first.payment_checks, second.payment_checks, fakes.send_tasks()) == (1, 0, 0)


async def test_a_check_that_cannot_be_queued_is_an_error_and_the_next_run_tries_again(
    fakes: Fakes,
) -> None:
    _, orphan = fakes.payments.add(status="ABORTED", pi_status="succeeded", created=NOW - 600)
    fakes.load()
    queued = fakes.recorder.check

    async def queue_down(task: object) -> None:
        raise CheckError("queue down")

    fakes.recorder.check = queue_down  # type: ignore[method-assign]
    failed = await fakes.run(now=NOW)
    fakes.recorder.check = queued  # type: ignore[method-assign]
    retried = await fakes.run(now=NOW + 60)

    assert (failed.errors, failed.payment_checks) == (1, 0)
    assert (retried.errors, [t.payment_intent_id for t in fakes.recorder.checks]) == (0, [orphan])


async def test_calls_stay_within_the_quotas_of_the_fakes(fakes: Fakes) -> None:
    for _ in range(20):
        fakes.payments.add(status="RUNNING", pi_status="succeeded", created=NOW - 600)
    for index in range(250):
        fakes.payments.add(status="SUCCEEDED", pi_status="succeeded", created=NOW - 900 - index)
    fakes.load()
    # Tight quotas: calls any faster than their settings would be refused (the pacer lets
    # two calls go together after a pause; the real buckets hold 100 and more).
    quotas(fakes.store, ListExecutions=(2, 4.0), SendTaskSuccess=(2, 20.0))
    fakes.stripe.rate_limits.configure(global_per_s=12.0, endpoint_per_s=12.0)

    summary = await fakes.run(
        now=NOW,
        reconcile_list_executions_per_s=3.0,
        reconcile_send_task_per_s=15.0,
        reconcile_stripe_per_s=10.0,
        reconcile_concurrency=8,
    )

    assert (summary.callbacks_sent, summary.errors) == (20, 0)
    assert fakes.store.throttled == {}
    assert fakes.stripe.rate_limits.refused == {}


async def test_one_bad_event_and_one_failed_call_are_counted_and_the_run_goes_on(
    fakes: Fakes,
) -> None:
    bad, _ = fakes.payments.add(status="RUNNING", pi_status="succeeded", created=NOW - 600)
    good, _ = fakes.payments.add(status="RUNNING", pi_status="canceled", created=NOW - 600)
    unseen, _ = fakes.payments.add(status="RUNNING", pi_status="succeeded", created=NOW - 86_400)
    fakes.payments.intents[0]["intent"]["metadata"]["paystep_token_parts"] = "x"
    fakes.load()
    fakes.stripe.add_fault(Fault(method="GET", path=r"/search$", status=500, times=None))

    summary = await fakes.run(now=NOW, reconcile_first_window_s=3600)

    assert summary.skipped == 1  # the damaged token: ignored as the webhook ignores it
    assert summary.errors == 1  # the search of `unseen`'s PaymentIntents
    assert summary.callbacks_sent == 1
    assert fakes.store.executions[good].status == "FAILED"
    assert fakes.store.executions[bad].status == fakes.store.executions[unseen].status == "RUNNING"
    # The listings were whole: the checkpoint moves on; the failed search is tried next run.
    assert fakes.checkpoints.saved is not None and fakes.checkpoints.saved.checkpoint == NOW
