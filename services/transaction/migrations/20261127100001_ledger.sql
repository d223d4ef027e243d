-- The ledger: accounts, categories, transactions. The transaction service
-- owns the `ledger` schema. Amounts are bigint minor units of the account's
-- currency (see freedumb_kit::money); nothing here is floating point.

CREATE TABLE ledger.accounts (
    id                   uuid        PRIMARY KEY,
    user_id              uuid        NOT NULL,
    name                 text        NOT NULL,
    kind                 text        NOT NULL CHECK (kind IN ('checking', 'savings', 'credit_card', 'cash', 'loan', 'investment')),
    currency             char(3)     NOT NULL,
    opening_balance      bigint      NOT NULL DEFAULT 0,
    -- AES-256-GCM under ENCRYPTION_KEY: 12-byte nonce followed by the ciphertext.
    account_number_enc   bytea,
    -- Shown as ••••1234; the rest never leaves the encrypted column.
    account_number_last4 text,
    archived_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX accounts_user_idx ON ledger.accounts (user_id, created_at);

CREATE TABLE ledger.categories (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL,
    name       text        NOT NULL,
    -- One level: a parent is always a top-level category (enforced by the service).
    parent_id  uuid        REFERENCES ledger.categories (id) ON DELETE RESTRICT,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Names are unique per user among siblings, whatever their case.
CREATE UNIQUE INDEX categories_name_idx
    ON ledger.categories (user_id, COALESCE(parent_id, '00000000-0000-0000-0000-000000000000'), lower(name));

-- Marks users whose default categories exist.
CREATE TABLE ledger.category_defaults (
    user_id    uuid        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger.transactions (
    id                uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL,
    account_id        uuid        NOT NULL REFERENCES ledger.accounts (id),
    -- Signed: negative leaves the account.
    amount            bigint      NOT NULL,
    -- Copied from the account, so amount filters can compare exactly.
    currency_exponent smallint    NOT NULL,
    date              date        NOT NULL,
    payee             text,
    description       text,
    -- NULL when uncategorised, and when the transaction is split.
    category_id       uuid        REFERENCES ledger.categories (id) ON DELETE SET NULL,
    tags              text[]      NOT NULL DEFAULT '{}',
    notes             text,
    -- The two legs of a transfer share it.
    transfer_id       uuid,
    -- A CSV import's fingerprint of the source row, per account.
    import_hash       text,
    recurring_rule_id uuid,
    occurrence_date   date,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactions_user_date_idx ON ledger.transactions (user_id, date DESC, id DESC);
CREATE INDEX transactions_account_idx ON ledger.transactions (account_id);
CREATE INDEX transactions_transfer_idx ON ledger.transactions (transfer_id) WHERE transfer_id IS NOT NULL;
CREATE UNIQUE INDEX transactions_import_idx ON ledger.transactions (account_id, import_hash) WHERE import_hash IS NOT NULL;
-- Each occurrence of a recurring rule exists at most once, whatever the workers do.
CREATE UNIQUE INDEX transactions_occurrence_idx
    ON ledger.transactions (recurring_rule_id, occurrence_date) WHERE recurring_rule_id IS NOT NULL;

CREATE TABLE ledger.transaction_splits (
    transaction_id uuid     NOT NULL REFERENCES ledger.transactions (id) ON DELETE CASCADE,
    position       smallint NOT NULL,
    category_id    uuid     REFERENCES ledger.categories (id) ON DELETE SET NULL,
    amount         bigint   NOT NULL,
    note           text,
    PRIMARY KEY (transaction_id, position)
);
CREATE INDEX transaction_splits_category_idx ON ledger.transaction_splits (category_id);
