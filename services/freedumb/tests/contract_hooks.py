"""schemathesis hooks for the contract test (tests/it/contract.rs).

Two kinds, each with its reason:

- Requests made the way a real client makes them, where the document states
  the form but a value's meaning comes from earlier answers.
- The documented false positives: requests the document allows and the
  server rightly refuses, because the rule depends on stored state or on
  several fields at once, which JSON Schema cannot state. Each is named by
  the operation, the status and the error `code` (and field) the server
  answers with, so any other refusal still fails the run.
"""

import json
import uuid

import schemathesis


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # A client picks a fresh Idempotency-Key per request; reusing one with
    # another body is a 422 by design (the key's own rule is tested in the
    # kit, idempotency.rs).
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    # `cursor` is opaque: only a previous page's `next_cursor` is one.
    if case.query and "cursor" in case.query:
        del case.query["cursor"]


# Amounts: the schema admits up to 3 decimals and 16 whole digits, what the
# currency with the most allows; the currency itself (of the account, or
# another field) decides the rest.
CURRENCY_BOUND = ("has more than", "is too large")
AMOUNT_FIELDS = ("amount", "opening_balance", "target_amount", "min_amount", "max_amount", "fee")

# (operation, status, error code, field or None): why the server is right.
FALSE_POSITIVES = {
    ("POST /v1/transactions", 422, "validation_failed", "splits"):
        "the splits must sum to the amount, and there are 2 to 50 of them or none",
    ("PATCH /v1/transactions/{id}", 422, "validation_failed", "splits"):
        "as for POST: the splits must sum to the (new or stored) amount",
    ("POST /v1/transactions", 422, "validation_failed", "category_id"):
        "a split transaction takes its categories from its splits: not both",
    ("PATCH /v1/transactions/{id}", 422, "validation_failed", "category_id"):
        "a split transaction takes its categories from its splits: not both",
    ("POST /v1/transactions/transfers", 422, "validation_failed", "to_account_id"):
        "the two accounts must differ and share a currency",
    ("POST /v1/budgets", 422, "unknown_category", "category_id"):
        "a budget's category must be one of the caller's that the budget service has learnt of (events)",
    ("POST /v1/recurring", 422, "validation_failed", "start_date"):
        "a rule starts at most 366 days before today, a bound that moves with the date",
    ("POST /v1/recurring", 422, "validation_failed", "end_date"):
        "the end date is not before the start date",
    ("POST /v1/portfolios/{id}/activities", 422, "validation_failed", "instrument_id"):
        "the instrument must be one of the caller's",
    ("GET /v1/portfolios/{id}/performance", 422, "validation_failed", "to"):
        "`to` is not before `from`, not after today and within 3,660 days of it: two parameters and the date",
    ("GET /v1/analytics/spending/categories", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/analytics/spending/payees", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/analytics/income-expense", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/analytics/cash-flow", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/analytics/net-worth", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/analytics/budgets", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/analytics/summary", 422, "validation_failed", "to"):
        "`to` is on or after `from` and at most 3 years after it: a rule across two parameters",
    ("GET /v1/portfolios/{id}/performance", 422, "validation_failed", "from"):
        "the period needs the day before `from`, so `from` is after 1900-01-01 (and `to`, the date, bounds it)",
    ("POST /v1/reports", 422, "validation_failed", "to"):
        "a report's `to` is on or after its `from` and at most 36 months after it: two fields at once",
}


def _error(response):
    try:
        body = json.loads(response.content)
    except ValueError:
        return None, []
    if not isinstance(body, dict):
        return None, []
    details = [d for d in body.get("details") or [] if isinstance(d, dict)]
    return body.get("code"), details


# Like FALSE_POSITIVES, for one message of a field whose other messages
# must still fail the run.
MESSAGE_FALSE_POSITIVES = {
    ("POST /v1/auth/register", "password", "is too common"):
        "the list of common passwords is the server's own",
    ("POST /v1/auth/register", "password", "must not be the email address"):
        "a rule across two fields",
    ("POST /v1/auth/register", "password", "must not repeat one character"):
        "not a pattern a generator honours without a lookahead",
    ("POST /v1/auth/register", "email", "must be an email address"):
        "`format: email` admits name@localhost and address literals; no one receives mail there",
    ("POST /v1/portfolios/{id}/activities", "date", "must not be after today"):
        "an activity is dated today or earlier, a bound that moves with the date",
    ("POST /v1/portfolios/{id}/activities", "quantity", "is more than is held"):
        "a sale or transfer out takes at most what the portfolio holds on its date (stored state)",
    ("POST /v1/portfolios/{id}/activities", "quantity", "leaves the disposal"):
        "a backdated disposal must leave every later one enough to take (stored state)",
    ("POST /v1/portfolios/{id}/activities", "unit_price", "quantity × unit_price is more than"):
        "a product of two fields, bounded by the currency's 10^15 minor units",
    ("POST /v1/portfolios/{id}/activities", "fee", "must not be more than the sale's gross"):
        "a sale's fee is at most quantity × unit_price: a rule across three fields",
    ("POST /v1/portfolios/{id}/activities", "amount", "is more than 10^15 minor units in the base"):
        "the amount converted at the day's rate into the portfolio's base currency (stored state)",
    ("POST /v1/portfolios/{id}/activities", "ratio", "makes a lot larger than"):
        "a split multiplies the open lots, whose size is stored state",
    ("POST /v1/portfolios/{id}/activities/import", "csv", "row "):
        "the file's sales must not take more than the portfolio holds (stored state)",
    ("POST /v1/portfolios/{id}/activities/import", "csv", "the disposal of "):
        "the file's rows must leave every recorded sale enough to take (stored state)",
}

# Fields under a prefix: the CSV import's mapping names columns (or
# indexes) of the file in the same request, and says which of amount and
# debit/credit it uses.
PREFIX_FALSE_POSITIVES = {
    ("POST /v1/transactions/import", "mapping."):
        "the mapping must name columns the file has, and either `amount` or `debit`/`credit`",
    ("POST /v1/portfolios/{id}/activities/import", "mapping."):
        "the mapping must name columns the file has",
}


def _explained(label, status, code, detail):
    field, message = detail.get("field"), detail.get("message") or ""
    if (label, status, code, field) in FALSE_POSITIVES:
        return True
    if status == 422 and any(
        (label, field) == (l, f) and message.startswith(m) for (l, f, m) in MESSAGE_FALSE_POSITIVES
    ):
        return True
    if status == 422 and any(
        label == l and (field or "").startswith(p) for (l, p) in PREFIX_FALSE_POSITIVES
    ):
        return True
    leaf = (field or "").rsplit(".", 1)[-1].split("[", 1)[0]
    return status == 422 and leaf in AMOUNT_FIELDS and message.startswith(CURRENCY_BOUND)


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """Drops a rejected schema-valid request only when every reason the
    server gave is a documented false positive."""
    if failure.code != "ST202":
        return True
    label = f"{case.method.upper()} {case.operation.path}"
    code, details = _error(response)
    if not details:
        return True
    return not all(_explained(label, response.status_code, code, d) for d in details)
