"""A fixed piece of CPU work, measured with every benchmark run so runs on two machines compare.

One unit is what stripe-python spends on one PaymentIntent create, both ways:
form-encoding its parameters (metadata carrying a 2,000-character token split
over keys, as the worker sends it) and turning the JSON answer into a
`stripe.PaymentIntent`; plus `stripe.Webhook.construct_event` on one fixed,
signed `payment_intent.succeeded` body (signature check and parse), as the
webhook does per event. `calibration_ms` is the process CPU time of one unit,
the median of 5 rounds; figures divided by it (CPU per task) or multiplied by
it (events/s) move far less between machines than the raw ones.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.parse
from typing import Any, Final

import stripe
from stripe._encode import _api_encode

SECRET: Final = "whsec_" + "ca" * 16
TOKEN: Final = "AQB" + "x7Yz" * 499 + "k"
ROUNDS: Final = 5
UNITS_PER_ROUND: Final = 400


def _fixtures() -> tuple[dict[str, Any], str, str, str]:
    # Fixed here, not built by the product's metadata module: the unit must not move
    # when the wire format does, or two runs would no longer compare.
    metadata = {"order_id": "ord_calibration", "paystep_attempt": "1", "paystep_tk_n": "4"}
    metadata |= {f"paystep_tk_{i}": TOKEN[i * 500 : (i + 1) * 500] for i in range(4)}
    params = {
        "amount": 1999,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "off_session": True,
        "metadata": metadata,
    }
    intent = {
        "id": "pi_3Calibration0000000000",
        "object": "payment_intent",
        "amount": 1999,
        "amount_received": 1999,
        "currency": "usd",
        "status": "succeeded",
        "latest_charge": "ch_3Calibration000000000",
        "metadata": metadata,
        "livemode": False,
        "created": 1_700_000_000,
    }
    answer = json.dumps(intent)
    event = json.dumps(
        {
            "id": "evt_3Calibration00000000",
            "object": "event",
            "api_version": "2024-06-20",
            "created": 1_700_000_000,
            "data": {"object": intent},
            "livemode": False,
            "type": "payment_intent.succeeded",
        },
        indent=2,
    )
    signature = stripe.WebhookSignature.generate_signature_header(event, SECRET)
    return params, answer, event, signature


def _unit(params: dict[str, Any], answer: str, event: str, signature: str) -> None:
    urllib.parse.urlencode(list(_api_encode(params)))
    stripe.PaymentIntent.construct_from(json.loads(answer), "sk_test_calibration")
    stripe.Webhook.construct_event(event, signature, SECRET)


def calibrate() -> dict[str, Any]:
    """`calibration_ms`: CPU ms of one unit; the rounds it came from."""
    fixtures = _fixtures()
    for _ in range(50):
        _unit(*fixtures)
    rounds = []
    for _ in range(ROUNDS):
        began = time.process_time()
        for _ in range(UNITS_PER_ROUND):
            _unit(*fixtures)
        rounds.append((time.process_time() - began) * 1000 / UNITS_PER_ROUND)
    return {
        "calibration_ms": round(statistics.median(rounds), 4),
        "calibration_rounds_ms": [round(r, 4) for r in rounds],
        "calibration_workload": "stripe-python: encode + parse one PaymentIntent create, "
        "Webhook.construct_event on one signed event",
    }


if __name__ == "__main__":
    print(json.dumps(calibrate(), indent=2))
