-- Portfolios, instruments, activities, and the tax lots derived from them.
-- The investment service owns the `investment` schema. Money is bigint minor
-- units (freedumb_kit::money); share quantities, unit prices and FX rates are
-- exact NUMERIC (src/decimal.rs). Nothing here is floating point.

CREATE TABLE investment.portfolios (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL,
    name          text        NOT NULL,
    base_currency char(3)     NOT NULL,
    cost_method   text        NOT NULL CHECK (cost_method IN ('fifo', 'average')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portfolios_user_idx ON investment.portfolios (user_id, created_at);

-- A security as one user knows it. Prices are looked up by symbol and
-- exchange; the row itself is the user's.
CREATE TABLE investment.instruments (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    symbol      text        NOT NULL,
    exchange    text        NOT NULL,
    asset_class text        NOT NULL CHECK (asset_class IN ('equity', 'etf', 'fund', 'bond', 'crypto', 'commodity', 'other')),
    currency    char(3)     NOT NULL,
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, symbol, exchange)
);

-- What happened, as the user recorded it. Which columns a kind uses is the
-- service's rule (src/activities.rs); the derived effects are stored with the
-- row so that every later read is a sum:
--   cash_minor, cash_currency: the cash the activity moved (buy: -(gross + fee))
--   fx_rate, fx_source: cash_currency (the instrument's, for a trade) to the
--   portfolio's base currency on the activity's date, as the price source
--   gave it; cash_base_minor: cash_minor at that rate.
CREATE TABLE investment.activities (
    id            uuid          PRIMARY KEY,
    user_id       uuid          NOT NULL,
    portfolio_id  uuid          NOT NULL REFERENCES investment.portfolios (id) ON DELETE CASCADE,
    -- Orders activities of one date in the order they were recorded.
    seq           bigserial     NOT NULL,
    kind          text          NOT NULL CHECK (kind IN ('buy', 'sell', 'dividend', 'interest', 'fee', 'split',
                                                        'deposit', 'withdrawal', 'transfer_in', 'transfer_out')),
    date          date          NOT NULL CHECK (date BETWEEN DATE '1900-01-01' AND DATE '9999-12-31'),
    instrument_id uuid          REFERENCES investment.instruments (id) ON DELETE RESTRICT,
    quantity      numeric(20, 8) CHECK (quantity > 0),
    unit_price    numeric(17, 8) CHECK (unit_price >= 0),
    -- quantity × unit_price, rounded to the instrument currency's minor unit.
    gross_minor   bigint,
    fee_minor     bigint        NOT NULL DEFAULT 0 CHECK (fee_minor >= 0),
    -- dividend, interest, fee, deposit, withdrawal: the amount, positive.
    amount_minor  bigint        CHECK (amount_minor > 0),
    ratio_to      integer       CHECK (ratio_to > 0),
    ratio_from    integer       CHECK (ratio_from > 0),
    cash_minor    bigint        NOT NULL,
    cash_currency char(3)       NOT NULL,
    cash_base_minor bigint      NOT NULL,
    fx_rate       numeric(38, 18) NOT NULL CHECK (fx_rate > 0),
    fx_source     text          NOT NULL,
    note          text,
    -- A CSV import's fingerprint of the source row, per portfolio.
    import_hash   text,
    created_at    timestamptz   NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX activities_import_idx ON investment.activities (portfolio_id, import_hash) WHERE import_hash IS NOT NULL;
CREATE INDEX activities_portfolio_idx ON investment.activities (portfolio_id, date, seq);
CREATE INDEX activities_instrument_idx ON investment.activities (portfolio_id, instrument_id, date, seq);

-- One lot per acquisition (buy, transfer_in), recomputed from the
-- portfolio's activities of that instrument whenever one changes
-- (src/lots.rs). Quantities are split-adjusted.
CREATE TABLE investment.lots (
    activity_id         uuid           PRIMARY KEY REFERENCES investment.activities (id) ON DELETE CASCADE,
    portfolio_id        uuid           NOT NULL REFERENCES investment.portfolios (id) ON DELETE CASCADE,
    instrument_id       uuid           NOT NULL REFERENCES investment.instruments (id),
    -- The order of acquisition (date, then recording): the order FIFO takes.
    position            integer        NOT NULL,
    acquired_on         date           NOT NULL,
    quantity            numeric(38, 8) NOT NULL CHECK (quantity > 0),
    open_quantity       numeric(38, 8) NOT NULL CHECK (open_quantity >= 0),
    -- In the instrument's currency (fee included), and in the portfolio's
    -- base currency at the FX rate of the acquisition date.
    cost_minor          bigint         NOT NULL,
    open_cost_minor     bigint         NOT NULL,
    cost_base_minor     bigint         NOT NULL,
    open_cost_base_minor bigint        NOT NULL
);
CREATE INDEX lots_holding_idx ON investment.lots (portfolio_id, instrument_id, position);

-- What each sale (or transfer out) took from which lot, and the realised
-- gain of a sale: proceeds (net of its fee, shared by quantity) less cost.
CREATE TABLE investment.lot_disposals (
    activity_id         uuid           NOT NULL REFERENCES investment.activities (id) ON DELETE CASCADE,
    lot_activity_id     uuid           NOT NULL REFERENCES investment.activities (id) ON DELETE CASCADE,
    portfolio_id        uuid           NOT NULL REFERENCES investment.portfolios (id) ON DELETE CASCADE,
    instrument_id       uuid           NOT NULL REFERENCES investment.instruments (id),
    position            smallint       NOT NULL,
    quantity            numeric(38, 8) NOT NULL CHECK (quantity > 0),
    cost_minor          bigint         NOT NULL,
    cost_base_minor     bigint         NOT NULL,
    -- NULL for a transfer out: nothing was sold.
    proceeds_minor      bigint,
    proceeds_base_minor bigint,
    PRIMARY KEY (activity_id, position)
);
CREATE INDEX lot_disposals_holding_idx ON investment.lot_disposals (portfolio_id, instrument_id);
