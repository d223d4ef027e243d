-- The investment-price worker's tables (src/worker.rs). Listings and prices
-- are market data, not a user's: the one kind of row in this schema that
-- belongs to no user, and which no API route returns by itself.

-- Every listing some portfolio holds, and how far its closes are stored.
-- A worker takes a due listing `FOR UPDATE SKIP LOCKED` and keeps it locked
-- while it asks the provider, so across replicas each listing and interval
-- is fetched once.
CREATE TABLE investment.listings (
    symbol         text        NOT NULL,
    exchange       text        NOT NULL,
    currency       char(3)     NOT NULL,
    -- The last day whose close is stored; NULL before the first fetch.
    closes_through date,
    refreshed_at   timestamptz,
    PRIMARY KEY (symbol, exchange)
);

CREATE TABLE investment.prices (
    symbol   text           NOT NULL,
    exchange text           NOT NULL,
    date     date           NOT NULL CHECK (date BETWEEN DATE '1900-01-01' AND DATE '9999-12-31'),
    close    numeric(28, 10) NOT NULL CHECK (close > 0),
    source   text           NOT NULL,
    PRIMARY KEY (symbol, exchange, date)
);

-- A portfolio's valuation of a day, announced as investment.valuation_changed
-- once: the row is the guard, inserted in the transaction of the event.
CREATE TABLE investment.valuations (
    portfolio_id           uuid        NOT NULL REFERENCES investment.portfolios (id) ON DELETE CASCADE,
    date                   date        NOT NULL,
    market_value_base_minor bigint     NOT NULL,
    cost_base_minor        bigint      NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (portfolio_id, date)
);
