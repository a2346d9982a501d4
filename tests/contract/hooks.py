"""A check schemathesis runs on top of its own (tests/contract/schemathesis.toml loads it).

`positive_data_acceptance` accepts a 422 from POST /v1/orders, whose business rules (funds, free
plans, reused keys) cannot be written in the schema. This check keeps the part that can: a request
the schema allows is never refused with a code that means "this request is malformed".
"""

import schemathesis

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
