"""Hostile input: fuzzed HTTP at the webhook process, malformed messages at the worker.

Webhook, GIVEN the real process: WHEN hypothesis sends requests with random methods,
paths, headers (raw bytes, odd encodings), signature headers (missing, malformed,
non-ASCII, stale, for another secret, for another body, valid) and bodies (bytes,
event-shaped JSON with junk tokens, other encodings, deep nesting, declared sizes
past the limit) THEN no answer is a 5xx, no request without a valid signature is
accepted, the process stays up and its memory stays flat.

Worker, GIVEN a running worker: WHEN the queue holds messages that are not tasks
(not JSON, blank, not an object, no token, unknown type, a token too long, a token
of lone surrogates, 256 KiB, nested past the parser's depth) and tasks whose input
is invalid (one of 256 KiB) THEN each ends in the dead-letter queue or failed, with
one log line naming it and why, and the next payment is taken as if nothing happened.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import boto3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paystep_local.localstack import LocalStack
from paystep_local.polling import eventually
from paystep_local.processes import Workers
from paystep_local.signing import signature_header
from statemachine.metadata import (
    ATTEMPT_KEY,
    CHUNK_CHARS,
    EXECUTION_KEY,
    TOKEN_CHUNK_PREFIX,
    TOKEN_PARTS_KEY,
)
from tests.faults.conftest import SOAK
from tests.faults.harness import rss_kib, start_webhook

WEBHOOK_PATH: Final = "/webhooks/stripe"
MAX_BODY_BYTES: Final = 512 * 1024
OTHER_SECRET: Final = "whsec_" + "0f" * 16
# Memory a process may gain over a fuzz run once warm; a leak of a few hundred
# bytes per request would pass it in the soak run.
RSS_GROWTH_LIMIT_KIB: Final = 16 * 1024
# Requests refused unread, and what they may add: a connection held after its answer
# costs ~10 KiB, so holding them would add ~20 MiB.
REFUSED_FLOOD: Final = 2000
RSS_FLOOD_LIMIT_KIB: Final = 4 * 1024


# -- a raw HTTP client: headers as bytes, no normalising ---------------------------------------


CLOSED_UNREAD: Final = 0
"""The status recorded when the server closed the connection before taking the whole body."""


@dataclass(repr=False)
class Request:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    declared_length: int | None = None
    signed: bool = False
    """One of its Stripe-Signature headers is fresh, over exactly this body, with the secret."""

    @property
    def to_webhook(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0] == WEBHOOK_PATH

    def __repr__(self) -> str:
        return (
            f"Request({self.method} {self.path}, headers={self.headers!r}, "
            f"body={self.body[:200]!r} ({len(self.body)} bytes), "
            f"declared_length={self.declared_length}, signed={self.signed})"
        )


class RawClient:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self._host, self._port = host, int(port)
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, request: Request) -> int:
        """The answer's status, or `CLOSED_UNREAD`.

        A kept-alive connection the server has closed meanwhile is retried once on a
        new one; a new connection that breaks while the body is being sent means the
        server answered (404, 405, 413, a malformed header) and closed without reading.
        """
        for _ in range(2):
            fresh = self._conn is None
            try:
                self._write(request)
            except OSError:
                self.close()
                if fresh:
                    return CLOSED_UNREAD
                continue
            try:
                return self._read(request)
            except (TimeoutError, ConnectionError, http.client.HTTPException):
                self.close()
                if fresh:
                    raise
        raise AssertionError("a new connection failed like a stale one")

    def _write(self, request: Request) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        conn = self._conn
        conn.putrequest(request.method, request.path, skip_accept_encoding=True)
        for name, value in request.headers:
            conn.putheader(name, value)
        length = len(request.body) if request.declared_length is None else request.declared_length
        conn.putheader("Content-Length", str(length))
        conn.endheaders(request.body if request.declared_length is None else None)

    def _read(self, request: Request) -> int:
        assert self._conn is not None
        response = self._conn.getresponse()
        response.read()
        if response.will_close or request.declared_length is not None:
            self.close()
        return response.status


# -- what hypothesis sends ---------------------------------------------------------------------

header_bytes = st.binary(max_size=120).filter(lambda b: b"\r" not in b and b"\n" not in b)
# Any code point, lone surrogates included (JSON escapes them; hypothesis' characters() never
# draws one).
junk_token = st.text(
    st.one_of(st.characters(codec=None), st.integers(0xD800, 0xDFFF).map(chr)),
    min_size=1,
    max_size=600,
)
metadata = st.dictionaries(st.text(max_size=45), st.text(max_size=80), max_size=6)
FUZZ_MACHINE: Final = "arn:aws:states:us-east-1:123456789012:stateMachine:fuzz"
FUZZ_EXECUTION: Final = "arn:aws:states:us-east-1:123456789012:execution:fuzz:ord_x"


def chunked(token: str) -> dict[str, str]:
    """`token` laid over the token keys as the worker lays a sealed one, unsealed."""
    chunks = [token[i : i + CHUNK_CHARS] for i in range(0, len(token), CHUNK_CHARS)]
    parts = {f"{TOKEN_CHUNK_PREFIX}{index}": chunk for index, chunk in enumerate(chunks)}
    return {**parts, TOKEN_PARTS_KEY: str(len(chunks))}


def mostly(valid: Any, junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`valid` 19 times in 20, else junk: most events get deep into the service."""
    return st.integers(0, 19).flatmap(lambda n: junk if n == 0 else st.just(valid))


@st.composite
def event_body(draw: st.DrawFn) -> bytes:
    """An event as Stripe shapes it, with junk in the places paystep reads."""
    meta = draw(metadata)
    if draw(st.booleans()):
        meta = {**meta, **chunked(draw(junk_token))}
        # Mostly an execution of the webhook's own state machine: the token gets opened.
        meta[EXECUTION_KEY] = draw(mostly(FUZZ_EXECUTION, st.text(max_size=60)))
        meta[ATTEMPT_KEY] = draw(mostly("1", st.text(max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        meta[TOKEN_PARTS_KEY] = draw(
            st.one_of(st.sampled_from(["²", "\u0661"]), st.text(max_size=5))
        )
    obj: dict[str, Any] = {
        "id": draw(mostly("pi_fuzz", st.text(max_size=30))),
        "object": draw(mostly("payment_intent", st.sampled_from(["charge", "", "event"]))),
        "status": draw(st.sampled_from(["succeeded", "processing", "canceled", "x"])),
        "amount": draw(mostly(1999, st.one_of(st.integers(), st.text(max_size=5), st.none()))),
        "amount_received": draw(
            st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70))
        ),
        "currency": draw(mostly("usd", st.text(max_size=5))),
        "latest_charge": draw(mostly(None, st.one_of(st.text(max_size=20), st.just({"id": 5})))),
        "metadata": draw(mostly(meta, st.lists(st.integers(), max_size=3))),
        "last_payment_error": draw(
            mostly(None, st.one_of(st.just({"code": 7}), st.text(max_size=5)))
        ),
    }
    event: dict[str, Any] = {
        "id": draw(mostly("evt_fuzz", st.one_of(st.text(max_size=40), st.just("e" * 300)))),
        "object": draw(mostly("event", st.sampled_from(["list", ""]))),
        "type": draw(
            st.sampled_from(
                [
                    "payment_intent.succeeded",
                    "payment_intent.payment_failed",
                    "payment_intent.canceled",
                    "payment_intent.processing",
                    "payment_intent.amount_capturable_updated",
                    "charge.succeeded",
                    "",
                ]
            )
        ),
        "livemode": draw(mostly(False, st.one_of(st.booleans(), st.text(max_size=3)))),
        "created": draw(mostly(1_700_000_000, st.one_of(st.floats(), st.text(max_size=3)))),
        "data": draw(mostly({"object": obj}, st.one_of(st.just({}), st.just(obj)))),
    }
    encoding = draw(st.sampled_from(["utf-8"] * 8 + ["utf-8-sig", "utf-16", "latin-1"]))
    text = json.dumps(event, indent=draw(st.sampled_from([None, 2])))
    return text.encode(encoding, errors="replace")


bodies = st.one_of(
    event_body(),
    event_body(),
    event_body(),
    st.binary(max_size=4096),
    st.text(max_size=2000).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=30,
    ).map(lambda value: json.dumps(value).encode()),
    st.integers(min_value=100, max_value=150_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(min_value=100, max_value=150_000).map(
        lambda depth: b'{"a":' * depth + b"1" + b"}" * depth
    ),
)


@st.composite
def signature(draw: st.DrawFn, body: bytes, secret: str) -> tuple[bytes | None, bool]:
    """A Stripe-Signature header value and whether it is a valid one for `body`."""
    now = int(time.time())
    utf8 = _is_utf8(body)
    text = body.decode("utf-8") if utf8 else ""
    kind = draw(st.sampled_from(
        ["valid"] * 5 + ["none", "bytes", "shape", "other_secret", "stale", "other_body"]
    ))  # fmt: skip
    if kind == "valid" and utf8:
        return signature_header(text, secret, now).encode(), True
    if kind == "other_secret" and utf8:
        return signature_header(text, OTHER_SECRET, now).encode(), False
    if kind == "stale" and utf8:
        return signature_header(text, secret, now - 3600).encode(), False
    if kind == "other_body" and utf8:
        return signature_header(text + " ", secret, now).encode(), False
    if kind == "bytes":
        return draw(header_bytes), False
    if kind == "shape":
        stamp = draw(st.one_of(st.just(str(now).encode()), header_bytes, st.just(b"9" * 5000)))
        v1 = draw(
            st.one_of(
                st.just(b"0" * 64), header_bytes, st.just("é".encode()), st.just(b"\xff" * 64)
            )
        )
        extra = draw(st.sampled_from([b"", b",v0=abc", b",v1=", b",t=1", b",,", b"\x00"]))
        return b"t=" + stamp + b",v1=" + v1 + extra, False
    return None, False


@st.composite
def requests(draw: st.DrawFn, secret: str) -> Request:
    body = draw(bodies)
    header, valid = draw(signature(body, secret))
    headers: list[tuple[bytes, bytes]] = []
    if header is not None:
        headers.append((b"Stripe-Signature", header))
    headers += draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"Content-Type", b"Content-Encoding", b"User-Agent", b"Accept",
                                 b"X-Forwarded-For", b"Stripe-Signature", b"Accept-Charset"]),
                st.one_of(header_bytes, st.sampled_from([b"application/json; charset=utf-16",
                                                         b"gzip", b"text/plain; charset=latin-1"])),
            ),
            max_size=3,
        )
    )  # fmt: skip
    method = draw(st.sampled_from(["POST"] * 20 + ["GET", "PUT", "DELETE", "PATCH"]))
    path = draw(st.sampled_from([WEBHOOK_PATH] * 20 + [WEBHOOK_PATH + "?x=1", "/", "/webhooks",
                                 "/webhooks/stripe/x", "/%00", "/metrics"]))  # fmt: skip
    declared = draw(st.sampled_from([None] * 18 + [MAX_BODY_BYTES + 1, 10**9]))
    if declared is not None:
        return Request(method, path, headers, b"", declared_length=declared)
    return Request(method, path, headers, body, signed=valid)


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- the webhook under fuzz --------------------------------------------------------------------


@pytest.fixture
def bare(stack: LocalStack, tmp_path: Path) -> Iterator[LocalStack]:
    """Only moto: a webhook needs nothing else."""
    assert stack.aws_endpoint
    with LocalStack(tmp_path / "stack", aws_endpoint=stack.aws_endpoint) as own:
        yield own


@dataclass
class Fuzz:
    client: RawClient
    statuses: Counter[int]
    problems: list[str]

    def check(self, request: Request) -> str | None:
        """What is wrong with the answer to `request`, None if nothing."""
        status = self.client.send(request)
        self.statuses[status] += 1
        shown = (
            f"{request.method} {request.path} {request.headers[:2]!r} body {request.body[:120]!r}"
        )
        oversize = len(request.body) > MAX_BODY_BYTES
        problem = None
        if status == CLOSED_UNREAD and request.signed and request.to_webhook:
            # Over the limit the answer is 413 before the body is read, and the client
            # may still be sending it when the server closes: that is the limit working.
            if len(request.headers) == 1 and not oversize:  # only the signature: well-formed
                problem = f"closed without reading a signed event: {shown}"
        elif status >= 500:
            problem = f"{status} for {shown}"
        elif 200 <= status < 300 and not (request.signed and request.to_webhook):
            problem = f"accepted without a valid signature ({status}): {shown}"
        elif 200 <= status < 300 and oversize:
            problem = f"accepted over the {MAX_BODY_BYTES}-byte limit ({status}): {shown}"
        if problem is not None:
            self.problems.append(problem)
        return problem


def known_cases(secret: str) -> list[Request]:
    """Inputs that once broke the webhook: every run sends them, whatever hypothesis draws."""
    nested = b"[" * 100_000 + b"]" * 100_000
    oversize = b'{"a":' * 99_506 + b"1" + b"}" * 99_506  # refused with 413 before it is read
    surrogate = json.dumps(
        {"id": "evt_1", "object": "event", "type": "payment_intent.succeeded", "livemode": False,
         "created": 1, "data": {"object": {"id": "pi_1", "object": "payment_intent",
         "status": "succeeded", "amount": 1999, "currency": "usd",
         "metadata": {"paystep_token_0": "\ud800", "paystep_token_parts": "1"}}}}
    ).encode()  # fmt: skip
    now = str(int(time.time())).encode()

    def signed(body: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"Stripe-Signature", signature_header(body.decode(), secret).encode())]

    return [
        Request("POST", WEBHOOK_PATH, signed(nested), nested, signed=True),
        Request("POST", WEBHOOK_PATH, signed(oversize), oversize, signed=True),
        Request("POST", WEBHOOK_PATH + "/x", [], nested),
        Request("POST", WEBHOOK_PATH, signed(surrogate), surrogate, signed=True),
        Request("POST", WEBHOOK_PATH, [(b"Content-Encoding", b"gzip")], b"{}"),
        Request(
            "POST", WEBHOOK_PATH, [(b"Stripe-Signature", b"t=" + now + b",v1=\xc3\xa9")], b"{}"
        ),
        Request("POST", WEBHOOK_PATH, [(b"Stripe-Signature", b"t=" + now + b",v1=\xff")], b"{}"),
    ]


def _run_fuzz(fuzz: Fuzz, secret: str, cases: int) -> None:
    @settings(
        max_examples=cases,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(requests(secret))
    def case(request: Request) -> None:
        problem = fuzz.check(request)
        assert problem is None, problem

    for known in known_cases(secret):
        case = example(known)(case)
    case()


def _flood_refused(client: RawClient, count: int) -> None:
    """Requests answered before their body is read: a declared size past the limit, 404, 405."""
    for index in range(count):
        method, path = [("POST", WEBHOOK_PATH), ("POST", "/nowhere"), ("GET", WEBHOOK_PATH)][
            index % 3
        ]
        status = client.send(Request(method, path, [], b"", declared_length=10**9))
        assert 400 <= status < 500, status


@pytest.mark.parametrize("cases", [1000, pytest.param(10_000, marks=SOAK)])
def test_fuzzed_requests_never_5xx_never_accepted_unsigned_and_memory_stays_flat(
    bare: LocalStack, cases: int
) -> None:
    webhook = start_webhook(
        bare,
        env={
            "PAYSTEP_STATE_MACHINE_ARN": FUZZ_MACHINE,
            "PAYSTEP_QUEUE_URL": _queue(),
            "PAYSTEP_NOTIFICATIONS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:none",
            "PAYSTEP_CARD_ATTEMPTS_TABLE": "none",
        },
    )
    client = RawClient(webhook.urls["base"])
    fuzz = Fuzz(client, Counter(), [])
    try:
        _run_fuzz(fuzz, bare.webhook_secret, 300)  # warm: imports, pools, caches
        rss_before = rss_kib(webhook)
        _run_fuzz(fuzz, bare.webhook_secret, cases)
        rss_after = rss_kib(webhook)
        _flood_refused(client, REFUSED_FLOOD)
        rss_flooded = rss_kib(webhook)
    finally:
        client.close()
    total = sum(fuzz.statuses.values())
    print(
        f"[faults] fuzz x{cases}: requests {total}, answers {dict(sorted(fuzz.statuses.items()))}, "
        f"5xx {sum(n for s, n in fuzz.statuses.items() if s >= 500)}, problems {len(fuzz.problems)}, "
        f"RSS {rss_before} -> {rss_after} KiB, after {REFUSED_FLOOD} refused unread {rss_flooded} KiB"
    )
    assert fuzz.problems == []
    assert webhook.process.poll() is None, "the webhook died"
    with urllib.request.urlopen(webhook.urls["base"] + "/healthz", timeout=5) as response:
        assert response.status == 200
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB, f"RSS {rss_before} -> {rss_after} KiB"
    assert rss_flooded - rss_after < RSS_FLOOD_LIMIT_KIB, f"RSS {rss_after} -> {rss_flooded} KiB"


# -- the worker and malformed messages ---------------------------------------------------------

SQS_MAX_MESSAGE_BYTES: Final = 256 * 1024
FAKE_TOKEN: Final = "AAAA" + uuid.uuid4().hex * 30


def _envelope(**fields: Any) -> dict[str, Any]:
    return {
        "type": "create_payment",
        "task_token": FAKE_TOKEN,
        "execution_id": "arn:aws:states:us-east-1:123456789012:execution:x:ord_x",
        "state": "CreatePayment",
        "attempt": 1,
        "request": {"order_id": "ord_x", "amount": 1999, "currency": "usd"},
        **fields,
    }


def _huge(message: dict[str, Any]) -> str:
    """`message` padded to SQS's largest body, the padding in the `pad` field."""
    body = json.dumps(message)
    return body.replace('"pad": ""', '"pad": "' + "x" * (SQS_MAX_MESSAGE_BYTES - len(body)) + '"')


POISON: Final = {
    "not json": "<xml>not json</xml>",
    "blank": " ",
    "null": "null",
    "array": "[1, 2, 3]",
    "no token": json.dumps({k: v for k, v in _envelope().items() if k != "task_token"}),
    "unknown type": json.dumps(_envelope(type="explode")),
    "token too long": json.dumps(_envelope(task_token="T" * 3000)),
    "token of lone surrogates, no request": json.dumps(
        {k: v for k, v in _envelope(task_token="\udc80" * 40).items() if k != "request"}
    ),
    "256 KiB without a token": _huge({"type": "create_payment", "pad": ""}),
    "nested past the parser": "[" * 100_000 + "]" * 100_000,
}
FAILED: Final = {
    "invalid input": json.dumps(_envelope(request={"order_id": "ord_x", "amount": -1})),
    "256 KiB of invalid input": _huge(_envelope(request={"order_id": "ord_x", "pad": ""})),
}


def _drain(sqs: Any, url: str, bodies: dict[str, str]) -> int:
    """Move what the queue holds into `bodies` (by message id); how many it holds now."""
    while True:
        answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = answer.get("Messages", [])
        if not messages:
            return len(bodies)
        for message in messages:
            bodies[message["MessageId"]] = message["Body"]
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_malformed_messages_end_in_the_dead_letter_queue_or_failed_and_the_loop_goes_on(
    local: LocalStack, workers: Workers
) -> None:
    assert local.deployment and local.stripe_base
    deployed = local.deployment
    sqs, sfn = boto3.client("sqs"), boto3.client("stepfunctions")
    for huge in (POISON["256 KiB without a token"], FAILED["256 KiB of invalid input"]):
        assert len(huge.encode()) == SQS_MAX_MESSAGE_BYTES
    sent = {
        sqs.send_message(QueueUrl=deployed["queue_url"], MessageBody=body)["MessageId"]: name
        for name, body in {**POISON, **FAILED}.items()
    }
    worker = workers.start(deployed, local.stripe_base)

    dead: dict[str, str] = {}
    eventually(
        lambda: _drain(sqs, deployed["dead_letter_queue_url"], dead) >= len(POISON),
        timeout_s=120,
        what=f"{len(POISON)} messages in the dead-letter queue",
    )
    order_id = f"ord_after_{uuid.uuid4().hex[:8]}"
    sfn.start_execution(
        stateMachineArn=deployed["state_machine_arn"],
        name=order_id,
        input=json.dumps({"order_id": order_id, "amount": 1999, "currency": "usd",
                          "payment_method": "pm_card_visa"}),
    )  # fmt: skip
    created = eventually(
        lambda: [e for e in worker.log_events() if e.get("order_id") == order_id
                 and e["event"] == "payment_intent.created"],
        what="the next payment taken",
    )  # fmt: skip

    events = worker.log_events()
    poison = {e["message_id"]: e for e in events if e["event"] == "message.poison"}
    failed = {e["message_id"]: e for e in events if e["event"] == "task.failed"}
    print(
        f"[faults] malformed messages: sent {len(sent)}, dead-lettered {len(dead)}, "
        f"failed {len(failed)}, poison log lines {len(poison)}, "
        f"worker restarts 0, next payment {created[0]['payment_intent']}"
    )
    assert sorted(sent[m] for m in dead) == sorted(POISON)
    assert {sent[m]: failed[m]["error"] for m in failed} == dict.fromkeys(
        FAILED, "Payment.InvalidInput"
    )
    for message_id, name in sent.items():
        if name in POISON:
            assert message_id in poison, f"no message.poison line for {name!r}"
            assert 0 < len(poison[message_id]["reason"]) < 500, poison[message_id]
    assert worker.process.poll() is None
    assert max(len(line) for line in worker.log_path.read_text().splitlines()) < 4096
    assert FAKE_TOKEN not in worker.log_path.read_text()


def _queue() -> str:
    """A task queue of the test's own: a success on a closed task is sent there to check."""
    url: str = boto3.client("sqs").create_queue(QueueName=f"tasks-{uuid.uuid4().hex[:12]}")[
        "QueueUrl"
    ]
    return url
