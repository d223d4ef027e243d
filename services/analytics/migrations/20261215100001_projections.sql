-- The analytics service's read models. It owns the `analytics` schema and
-- learns everything from other services' events (docs/events.md), never
-- from their tables. Amounts are bigint minor units of the row's currency:
-- nothing here is ever converted between currencies.
--
-- Whole-state rows (accounts, transactions, budgets, recurring rules) keep
-- `as_of`, the envelope's `occurred_at` of the last event applied, because
-- delivery order is not guaranteed: an older event than `as_of` is ignored.
-- Deletions leave a tombstone (`deleted`), so a late `created` or `updated`
-- never revives what is gone.

CREATE TABLE analytics.accounts (
    account_id            uuid        PRIMARY KEY,
    user_id               uuid        NOT NULL,
    name                  text        NOT NULL,
    kind                  text        NOT NULL,
    currency              text        NOT NULL,
    opening_balance_minor bigint      NOT NULL,
    archived              boolean     NOT NULL,
    as_of                 timestamptz NOT NULL
);
CREATE INDEX accounts_user_idx ON analytics.accounts (user_id, currency);

-- `category.*` events are not whole states (a rename carries only the
-- name), so each fact is kept on its own terms: the name with the time of
-- the event that set it, the parent from `created` (the only event that
-- names it), and removal for good.
CREATE TABLE analytics.categories (
    category_id uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    name        text,
    name_as_of  timestamptz,
    parent_id   uuid,
    removed     boolean     NOT NULL DEFAULT false,
    -- Set by `category.merged`: the spending recorded under this category
    -- is reported under that one.
    merged_into uuid
);
CREATE INDEX categories_user_idx ON analytics.categories (user_id);

-- Each transaction's last applied state, so an update or a delete can take
-- back exactly what the previous state added to the daily aggregates.
-- The state columns are null only in a tombstone whose transaction was
-- never seen alive.
CREATE TABLE analytics.transactions (
    transaction_id uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL,
    as_of          timestamptz NOT NULL,
    deleted        boolean     NOT NULL DEFAULT false,
    account_id     uuid,
    currency       text,
    amount_minor   bigint,
    date           date,
    transfer_id    uuid,
    payee          text,
    -- [{"category_id": uuid|null, "amount_minor": int}, ...]
    allocations    jsonb
);

-- Per user, currency and day. Income and expense leave transfers out
-- (moving money between one's own accounts is neither); transfers are kept
-- apart so balances still add up.
CREATE TABLE analytics.daily_totals (
    user_id             uuid    NOT NULL,
    currency            text    NOT NULL,
    day                 date    NOT NULL,
    -- The positive non-transfer amounts.
    income_minor        bigint  NOT NULL DEFAULT 0,
    -- The negative non-transfer amounts, as a positive number.
    expense_minor       bigint  NOT NULL DEFAULT 0,
    transfers_in_minor  bigint  NOT NULL DEFAULT 0,
    transfers_out_minor bigint  NOT NULL DEFAULT 0,
    transactions        integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, currency, day)
);

-- Net allocation amounts per category (signed: spending is negative),
-- transfers left out. `category_id` is the nil UUID for uncategorised.
CREATE TABLE analytics.daily_categories (
    user_id      uuid   NOT NULL,
    currency     text   NOT NULL,
    day          date   NOT NULL,
    category_id  uuid   NOT NULL,
    amount_minor bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, currency, day, category_id)
);

-- Net amounts per normalised payee (trimmed, inner spaces collapsed,
-- lower-cased; '' for none), transfers left out. `payee` is the spelling
-- last seen, for display.
CREATE TABLE analytics.daily_payees (
    user_id      uuid    NOT NULL,
    currency     text    NOT NULL,
    day          date    NOT NULL,
    payee_key    text    NOT NULL,
    payee        text,
    amount_minor bigint  NOT NULL DEFAULT 0,
    transactions integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, currency, day, payee_key)
);

-- Each account's net change per day, transfers included.
CREATE TABLE analytics.daily_accounts (
    user_id      uuid   NOT NULL,
    account_id   uuid   NOT NULL,
    currency     text   NOT NULL,
    day          date   NOT NULL,
    net_minor    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, account_id, day)
);

CREATE TABLE analytics.budgets (
    budget_id    uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    as_of        timestamptz NOT NULL,
    deleted      boolean     NOT NULL DEFAULT false,
    category_id  uuid,
    currency     text,
    amount_minor bigint,
    period       text,
    rollover     boolean,
    starts_on    date
);
CREATE INDEX budgets_user_idx ON analytics.budgets (user_id) WHERE NOT deleted;

CREATE TABLE analytics.recurring_rules (
    rule_id             uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL,
    as_of               timestamptz NOT NULL,
    deleted             boolean     NOT NULL DEFAULT false,
    account_id          uuid,
    currency            text,
    amount_minor        bigint,
    payee               text,
    category_id         uuid,
    frequency           text,
    "interval"          integer,
    start_date          date,
    day_of_month        integer,
    end_date            date,
    max_occurrences     integer,
    occurrences_created integer,
    next_occurrence     date,
    active              boolean
);
CREATE INDEX recurring_rules_user_idx ON analytics.recurring_rules (user_id) WHERE NOT deleted;

-- Portfolios deleted: their valuations are gone and late ones are ignored.
CREATE TABLE analytics.deleted_portfolios (
    portfolio_id uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL,
    deleted_at   timestamptz NOT NULL
);

-- One valuation per portfolio and day, in the portfolio's base currency
-- (cash is not in it, as in the event).
CREATE TABLE analytics.valuations (
    portfolio_id       uuid        NOT NULL,
    day                date        NOT NULL,
    user_id            uuid        NOT NULL,
    currency           text        NOT NULL,
    market_value_minor bigint      NOT NULL,
    as_of              timestamptz NOT NULL,
    PRIMARY KEY (portfolio_id, day)
);
CREATE INDEX valuations_user_idx ON analytics.valuations (user_id, day);
