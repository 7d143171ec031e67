"""The SQS worker daemon: Step Functions task messages in, Stripe calls and callbacks out.

One module per concept:

- `settings`: the `PAYSTEP_*` settings of `paystep worker`.
- `queue`: SQS receive, and deletes / visibility changes sent in batches.
- `leases`: the messages this process holds, and when their visibility needs extending.
- `messages`: the task message decoded at the edge; a poison message is an exception.
- `limiter`: the pace of Stripe calls, found from Stripe's 429s (no coordinator).
- `stripe_api`: the Stripe calls the worker makes, through the limit, timed.
- `handlers`: create, cancel and refund a payment.
- `classify`: the one place deciding retry, fail or dead-letter for an exception.
- `consumer`: the loop: receive, handle within the concurrency bound, settle, shut down.
- `metrics`: Prometheus metrics of one worker process.
- `main`: the entry point (`paystep worker`, `python -m worker`).
"""
