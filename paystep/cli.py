"""The `paystep` command: one subcommand per job, each loading its own settings.

A subcommand reads its settings with `load_settings` and configures logging from
them once, before doing anything: the services (worker, webhook, reconcile) in
their own `main`, the others here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from pydantic import ValidationError

from paystep_common.logging import configure_logging
from paystep_common.settings import PaystepSettings, load_settings

Handler = Callable[[argparse.Namespace], int]

STATUS_EXIT_CODES: Final = """exit codes:
  0  paid: the order's row is paid, and no other payment of it is kept
  1  not paid: every execution ended without a payment kept
  2  bad arguments or settings
  3  in progress: an execution is running, or the order is claimed
  4  unknown order: no row, no execution named after it, no PaymentIntent
  5  a person must act: a refund failed, or money is kept that no paid order accounts for
  6  a source could not be read (the view printed is partial)"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not hasattr(args, "args"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        # The services parse their own options (argparse's REMAINDER stops at a leading --flag).
        args.args = [*rest, *args.args]
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paystep", description="Payments on AWS Step Functions and Stripe."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    deploy = commands.add_parser("deploy", help="create or update the AWS resources")
    deploy.add_argument("--name", default="paystep", help="resource name prefix")
    deploy.add_argument("--role-arn", help="state machine role (default: create one)")
    deploy.add_argument("--max-attempts", type=int, help="payment attempts after declines")
    deploy.add_argument("--retry-backoff-s", type=int, help="wait before the 2nd attempt (doubles)")
    deploy.add_argument("--payment-timeout-s", type=int, help="how long a payment may wait")
    deploy.add_argument(
        "--payment-heartbeat-s", type=int, help="heartbeat window of the payment wait (0: none)"
    )
    deploy.add_argument("--worker-task-timeout-s", type=int, help="cancel/refund task timeout")
    deploy.add_argument(
        "--settlement-poll-s",
        type=int,
        help="after a timeout, how often a processing payment is re-checked",
    )
    deploy.add_argument("--output", choices=["text", "json"], default="text")
    deploy.set_defaults(handler=_with_logging("deploy", _deploy))

    pay = commands.add_parser("pay", help="start a payment execution")
    pay.add_argument("--input", dest="input_json", help="the whole execution input as JSON")
    pay.add_argument("--order-id")
    pay.add_argument("--amount", help="integer, in the currency's minor unit")
    pay.add_argument("--currency")
    pay.add_argument("--customer")
    pay.add_argument("--payment-method")
    pay.add_argument("--receipt-email")
    pay.add_argument(
        "--capture-method",
        choices=["automatic", "manual"],
        help="manual: authorise now, capture once the order is recorded (default automatic)",
    )
    pay.add_argument(
        "--capture-deadline-s",
        help="manual capture: seconds after the authorisation to capture by (default 432000, "
        "5 days; the card's capture_before if sooner)",
    )
    pay.add_argument("--item", action="append", default=[], metavar="SKU=QTY")
    pay.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    pay.add_argument("--state-machine-arn", default=os.environ.get("PAYSTEP_STATE_MACHINE_ARN"))
    pay.add_argument("--execution-name", help="default: the order id")
    pay.add_argument("--wait", action="store_true", help="follow the execution to its end")
    pay.set_defaults(handler=_with_logging("pay", _pay))

    status = commands.add_parser(
        "status",
        help="where an order's payment is: its row, executions and PaymentIntents (read only)",
        description=(
            "One view of an order: its row and holds (DynamoDB), every execution that "
            "claimed it or is named after it (Step Functions) and its PaymentIntents "
            "(Stripe). Reads only; a Stripe restricted key with read access to "
            "PaymentIntents and Refunds is enough."
        ),
        epilog=STATUS_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument("order_id", metavar="ORDER_ID")
    status.add_argument("--output", choices=["table", "json"], default="table")
    status.set_defaults(handler=_status)

    demo = commands.add_parser("demo", help="run sample payments on the embedded local stack")
    demo.add_argument("--workers", type=int, default=2)
    demo.set_defaults(handler=_with_logging("demo", lambda args: _local("demo", args.workers)))
    dev = commands.add_parser("dev", help="run the embedded local stack until Ctrl-C")
    dev.add_argument("--workers", type=int, default=1)
    dev.set_defaults(handler=_with_logging("dev", lambda args: _local("dev", args.workers)))

    keygen = commands.add_parser(
        "keygen", help="print a new kid:key for PAYSTEP_TOKEN_KEYS (put it in a secret store)"
    )
    keygen.add_argument("--kid", help="the key id, 1-16 of A-Z a-z 0-9 _ - (default: random)")
    keygen.set_defaults(handler=_keygen)

    for name, module, text in (
        ("worker", "worker.main", "run the worker daemon (SQS tasks to Stripe)"),
        ("webhook", "webhook.main", "run the Stripe webhook service"),
        ("reconcile", "webhook.reconcile", "finish what the webhook missed"),
    ):
        service = commands.add_parser(name, help=text, add_help=False)
        service.add_argument("args", nargs=argparse.REMAINDER)
        service.set_defaults(handler=_delegate(module))
    return parser


def _with_logging(command: str, handler: Handler) -> Handler:
    """`handler` run after the logging settings are read and applied."""

    def configured(args: argparse.Namespace) -> int:
        configure_logging(load_settings(PaystepSettings, command))
        return handler(args)

    return configured


def _local(command: str, workers: int) -> int:
    try:
        from paystep import demo
    except ModuleNotFoundError as exc:
        # The local doubles (paystep_local, moto, localstripe) are dev tooling, not in the image.
        print(
            f"paystep {command}: the local stack is not installed ({exc.name}); "
            "install paystep with its dev extra: pip install 'paystep[dev]'",
            file=sys.stderr,
        )
        return 2

    return demo.demo(workers) if command == "demo" else demo.dev(workers)


def _delegate(module: str) -> Handler:
    """Hand the rest of the command line to a service's own `main(argv) -> int`."""

    def handler(args: argparse.Namespace) -> int:
        service_main: Callable[[Sequence[str]], int] = importlib.import_module(module).main
        return service_main(args.args)

    return handler


def _keygen(args: argparse.Namespace) -> int:
    """To stdout only: no logging is configured, so the key cannot reach a log."""
    from statemachine.seal import new_key

    try:
        print(new_key(args.kid))
    except ValueError as exc:
        print(f"paystep keygen: {exc}", file=sys.stderr)
        return 2
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from statemachine.asl import Tunables
    from statemachine.deploy import DeployOptions, deploy

    overrides = {
        key: value
        for key, value in {
            "max_attempts": args.max_attempts,
            "retry_backoff_s": args.retry_backoff_s,
            "payment_timeout_s": args.payment_timeout_s,
            "payment_heartbeat_s": args.payment_heartbeat_s,
            "worker_task_timeout_s": args.worker_task_timeout_s,
            "settlement_poll_s": args.settlement_poll_s,
        }.items()
        if value is not None
    }
    if overrides.get("payment_heartbeat_s") == 0:
        overrides["payment_heartbeat_s"] = None
    try:
        options = DeployOptions(
            name=args.name, role_arn=args.role_arn, tunables=Tunables(**overrides)
        )
    except ValidationError as exc:
        from statemachine.models import describe_validation_error

        print(f"paystep deploy: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    result = asyncio.run(deploy(options))
    if args.output == "json":
        print(result.model_dump_json(indent=2))
    else:
        for key, value in result.model_dump().items():
            print(f"{key}: {value}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from paystep.status import (
        EXIT_BAD_ARGUMENTS,
        BadOrderId,
        StatusSettings,
        read_status,
        render_json,
        render_table,
    )

    settings = load_settings(StatusSettings, "status")
    configure_logging(settings)
    try:
        status = asyncio.run(read_status(settings, args.order_id))
    except BadOrderId as exc:
        print(f"paystep status: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    print(render_json(status) if args.output == "json" else render_table(status))
    return status.exit_code


def _pay(args: argparse.Namespace) -> int:
    from paystep.pay import PayError, build_request, pay

    try:
        request = build_request(
            input_json=args.input_json,
            order_id=args.order_id,
            amount=args.amount,
            currency=args.currency,
            customer=args.customer,
            payment_method=args.payment_method,
            receipt_email=args.receipt_email,
            capture_method=args.capture_method,
            capture_deadline_s=args.capture_deadline_s,
            items=args.item,
            metadata=args.metadata,
        )
        if not args.state_machine_arn:
            raise PayError("no state machine: set PAYSTEP_STATE_MACHINE_ARN or --state-machine-arn")
        return asyncio.run(
            pay(
                request,
                state_machine_arn=args.state_machine_arn,
                execution_name=args.execution_name,
                wait=args.wait,
            )
        )
    except PayError as exc:
        print(f"paystep pay: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
