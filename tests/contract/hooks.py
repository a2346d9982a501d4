"""Checks schemathesis runs on top of its own (tests/contract/schemathesis.toml loads them).

`positive_data_acceptance` accepts a 422 from POST /v1/orders, whose business rules (funds, free
plans, reused keys) cannot be written in the schema. The first check keeps the part that can: a
request the schema allows is never refused with a code that means "this request is malformed".

The second holds the providers' notification endpoints to their refusal: schemathesis cannot sign
a notification, so none of its requests may be taken.

A hook gives each documented example of POST /v1/orders an Idempotency-Key of its own.
"""

import uuid

import schemathesis
from schemathesis.generation.meta import TestPhase

# Error codes that blame the shape of a request, never the state of the data.
MALFORMED = {
    "malformed_json",
    "unsupported_media_type",
    "invalid_body",
    "invalid_field",
    "invalid_query",
    "idempotency_key_required",
    "invalid_idempotency_key",
    "unknown_worker",
    "client_price_rejected",
}


@schemathesis.check
def schema_valid_request_is_not_called_malformed(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return None
    try:
        code = response.json()["error"]["code"]
    except Exception:  # not our error body: the other checks judge it
        return None
    if code in MALFORMED:
        raise AssertionError(
            f"A request the schema allows was refused as malformed: {response.status_code} `{code}`"
        )
    return None


# What each notification endpoint answers a notification it did not take: (status, exact body or
# None for any). WeChat's refusal is a status; Alipay answers 200 whatever happened and refuses
# with the body `fail`.
REFUSED = {
    "/v1/payments/wechat/notify": (401, None),
    "/v1/payments/alipay/notify": (200, "fail"),
}


@schemathesis.check
def unsigned_notification_is_refused(ctx, response, case):
    refused = REFUSED.get(case.operation.path)
    if refused is None or case.method.upper() != "POST":
        return None
    status, body = refused
    if response.status_code != status or (body is not None and response.text != body):
        raise AssertionError(
            f"An unsigned notification was not refused: {response.status_code} {response.text[:200]!r}"
            f" (expected {status}" + (f" `{body}`)" if body else ")")
        )
    return None


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """The examples of POST /v1/orders (points, each WeChat and Alipay channel) are purchases of
    their own, as a buyer makes them, but schemathesis sends them all with the one key it generated
    for the header: every one after the first would be 422 `idempotency_key_reused`, and no WeChat
    or Alipay checkout would be answered 201 and checked against the document."""
    meta = case.meta
    if (
        case.operation.label == "POST /v1/orders"
        and meta is not None
        and meta.phase.name == TestPhase.EXAMPLES
        and case.headers
        and "Idempotency-Key" in case.headers
    ):
        case.headers["Idempotency-Key"] = f"contract-example-{uuid.uuid4()}"
