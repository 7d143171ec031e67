"""The order's row and its stock: claim and hold before any Stripe call, release after.

One execution at a time pays an order. Its first task claims the order's row and
takes the items out of stock in one DynamoDB transaction, so either both happen
or neither does: an order that cannot ship never reaches Stripe, and nothing is
held for it. The row records the execution (`execution_id`, and every execution
that ever claimed it in `executions`) and what it holds (`held_items`).

Row states (`status`): `paying` (claimed by `execution_id`; `claim_state` is
`open`, which the sparse index `open-claims` lists), `authorized` with manual
capture (`payment_intent_id` holds the customer's funds, the claim still open),
then `paid` (the state machine's `RecordPaid` makes the holds permanent: it
removes `held_items` and the claim), or `released` (every other end: stock back, claim gone), or
`refunded` (a payment was taken and refunded: `MarkRefunded`). An order whose
row is `released` or `refunded` can be claimed again; `paid` or `paying` cannot.

Every write is conditional, so repeating a step changes nothing: a second claim
by the same execution finds its own claim, a second release finds none.
https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from botocore.exceptions import ClientError

from statemachine import causes
from statemachine.causes import Failure
from statemachine.models import Item

PAYING: Final = "paying"
# Manual capture: authorised, the claim still open until the capture (the ASL sets it).
AUTHORIZED: Final = "authorized"
PAID: Final = "paid"
RELEASED: Final = "released"
REFUNDED: Final = "refunded"
OPEN: Final = "open"
OPEN_CLAIMS_INDEX: Final = "open-claims"
CLAIMABLE: Final = (RELEASED, REFUNDED)
CONDITION_FAILED: Final = "ConditionalCheckFailed"


class OrderRefused(Exception):
    """The order cannot be claimed or held: the execution fails with `failure`, no payment."""

    def __init__(self, failure: Failure, *, holder: str | None = None) -> None:
        super().__init__(failure.cause)
        self.failure = failure
        self.holder = holder
        """For `Order.InProgress`: the execution whose claim is open."""


@dataclass(frozen=True, slots=True)
class Claim:
    """An open claim: the execution that is paying the order, since when."""

    order_id: str
    execution_id: str
    claimed_at: str


@dataclass(frozen=True, slots=True)
class Released:
    order_id: str
    items: int
    """How many items went back to stock."""
    authorization: str | None = None
    """The PaymentIntent the claim held uncaptured (the row was `authorized`), else None."""


class Orders:
    """The orders and inventory tables over an injected aioboto3 `dynamodb` client."""

    def __init__(self, dynamodb: Any, orders_table: str, inventory_table: str) -> None:
        self._ddb = dynamodb
        self._orders = orders_table
        self._inventory = inventory_table

    async def reserve(
        self, execution_id: str, order_id: str, items: Sequence[Item], now: str
    ) -> bool:
        """Claim the order for `execution_id` and hold its items; False if it already had.

        Raises `OrderRefused` (`Order.AlreadyPaid`, `Order.InProgress`,
        `Order.Unfulfillable`) when the order is not this execution's to pay. Every
        condition makes a repeat harmless, so no transaction token is needed (a token
        reused with other parameters would be refused).
        """
        actions = [self._claim(execution_id, order_id, items, now)]
        actions += [self._take(item) for item in items]
        try:
            await self._ddb.transact_write_items(TransactItems=actions)
        except ClientError as exc:
            reasons = _cancellation_codes(exc)
            if reasons is None or CONDITION_FAILED not in reasons:
                raise
            if reasons[0] == CONDITION_FAILED:
                return await self._claimed_already(execution_id, order_id)
            short = [item for item, code in zip(items, reasons[1:], strict=False)
                     if code == CONDITION_FAILED]  # fmt: skip
            raise OrderRefused(await self._shortages(order_id, short)) from None
        return True

    async def release(self, execution_id: str, order_id: str) -> Released | None:
        """Put the execution's holds back and end its claim, once; None if nothing was open."""
        row = await self._row(order_id)
        if row.get("execution_id") != execution_id or row.get("claim_state") != OPEN:
            return None
        held = [_item_of(value) for value in row.get("held_items", [])]
        # A refunded order stays `refunded` (the record of the refund); any other open
        # claim ends `released`, and the order can be paid again.
        status = REFUNDED if row.get("status") == REFUNDED else RELEASED
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._orders,
                    "Key": {"order_id": {"S": order_id}},
                    "UpdateExpression": "SET #status = :status REMOVE claim_state, held_items",
                    "ConditionExpression": "execution_id = :execution AND claim_state = :open",
                    "ExpressionAttributeNames": {"#status": "status"},
                    "ExpressionAttributeValues": {
                        ":status": {"S": status},
                        ":execution": {"S": execution_id},
                        ":open": {"S": OPEN},
                    },
                }
            }
        ]
        actions += [self._put_back(item) for item in held]
        try:
            await self._ddb.transact_write_items(TransactItems=actions)
        except ClientError as exc:
            reasons = _cancellation_codes(exc)
            if reasons is not None and reasons[0] == CONDITION_FAILED:
                return None
            raise
        return Released(order_id, len(held), _authorization(row))

    async def authorization(self, execution_id: str, order_id: str) -> str | None:
        """The PaymentIntent authorised and not captured under the execution's open claim."""
        row = await self._row(order_id)
        if row.get("execution_id") != execution_id or row.get("claim_state") != OPEN:
            return None
        return _authorization(row)

    async def open_claims(self) -> AsyncIterator[Claim]:
        """Every open claim, oldest first (the sparse index holds only those)."""
        params: dict[str, Any] = {
            "TableName": self._orders,
            "IndexName": OPEN_CLAIMS_INDEX,
            "KeyConditionExpression": "claim_state = :open",
            "ExpressionAttributeValues": {":open": {"S": OPEN}},
        }
        while True:
            page = await self._ddb.query(**params)
            for row in page.get("Items", []):
                yield Claim(
                    order_id=row["order_id"]["S"],
                    execution_id=row.get("execution_id", {}).get("S", ""),
                    claimed_at=row.get("claimed_at", {}).get("S", ""),
                )
            if "LastEvaluatedKey" not in page:
                return
            params["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _claim(
        self, execution_id: str, order_id: str, items: Sequence[Item], now: str
    ) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._orders,
                "Key": {"order_id": {"S": order_id}},
                "UpdateExpression": (
                    "SET #status = :paying, execution_id = :execution, claimed_at = :now, "
                    "claim_state = :open, held_items = :items ADD executions :executions"
                ),
                "ConditionExpression": (
                    "attribute_not_exists(#status) OR #status IN (:released, :refunded)"
                ),
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":paying": {"S": PAYING},
                    ":execution": {"S": execution_id},
                    ":now": {"S": now},
                    ":open": {"S": OPEN},
                    ":items": {"L": [_held(item) for item in items]},
                    ":executions": {"SS": [execution_id]},
                    ":released": {"S": RELEASED},
                    ":refunded": {"S": REFUNDED},
                },
            }
        }

    def _take(self, item: Item) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._inventory,
                "Key": {"sku": {"S": item.sku}},
                "UpdateExpression": "SET stock = stock - :quantity",
                "ConditionExpression": "stock >= :quantity",
                "ExpressionAttributeValues": {":quantity": {"N": str(item.quantity)}},
            }
        }

    def _put_back(self, item: Item) -> dict[str, Any]:
        # ADD, not SET stock + q: a row deleted meanwhile is recreated instead of failing
        # the whole release.
        return {
            "Update": {
                "TableName": self._inventory,
                "Key": {"sku": {"S": item.sku}},
                "UpdateExpression": "ADD stock :quantity",
                "ExpressionAttributeValues": {":quantity": {"N": str(item.quantity)}},
            }
        }

    async def _claimed_already(self, execution_id: str, order_id: str) -> bool:
        row = await self._row(order_id)
        holder = row.get("execution_id")
        if row.get("status") == PAYING and holder == execution_id:
            return False
        if row.get("status") == PAID:
            raise OrderRefused(causes.already_paid(order_id, row.get("payment_intent_id"), holder))
        raise OrderRefused(causes.in_progress(order_id, holder), holder=holder)

    async def _shortages(self, order_id: str, short: Sequence[Item]) -> Failure:
        found: list[dict[str, str | int]] = []
        for item in short:
            answer = await self._ddb.get_item(
                TableName=self._inventory,
                Key={"sku": {"S": item.sku}},
                ConsistentRead=True,
                ProjectionExpression="stock",
            )
            stock = answer.get("Item", {}).get("stock", {}).get("N", "0")
            found.append({"sku": item.sku, "asked": item.quantity, "left": int(stock)})
        return causes.unfulfillable(order_id, found)

    async def _row(self, order_id: str) -> dict[str, Any]:
        answer = await self._ddb.get_item(
            TableName=self._orders, Key={"order_id": {"S": order_id}}, ConsistentRead=True
        )
        return {name: _plain(value) for name, value in answer.get("Item", {}).items()}


def _authorization(row: dict[str, Any]) -> str | None:
    payment_intent_id = row.get("payment_intent_id")
    return str(payment_intent_id) if row.get("status") == AUTHORIZED and payment_intent_id else None


def _held(item: Item) -> dict[str, Any]:
    return {"M": {"sku": {"S": item.sku}, "quantity": {"N": str(item.quantity)}}}


def _item_of(value: Any) -> Item:
    return Item(sku=value["sku"], quantity=int(value["quantity"]))


def _plain(value: dict[str, Any]) -> Any:
    """A DynamoDB attribute value as plain Python (the types this table uses)."""
    kind, inner = next(iter(value.items()))
    if kind == "L":
        return [_plain(element) for element in inner]
    if kind == "M":
        return {name: _plain(element) for name, element in inner.items()}
    if kind == "SS":
        return set(inner)
    return inner


def _cancellation_codes(exc: ClientError) -> list[str] | None:
    """The per-action codes of a canceled transaction, or None for any other error."""
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return None
    reasons = exc.response.get("CancellationReasons") or []
    return [str(reason.get("Code", "None")) for reason in reasons] or None
