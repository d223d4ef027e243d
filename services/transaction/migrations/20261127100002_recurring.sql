-- Recurring rules. The worker (`freedumb worker recurring`) creates each
-- due occurrence as a transaction with (recurring_rule_id, occurrence_date)
-- set; the unique index on that pair in ledger.transactions makes a second
-- creation impossible, whatever the workers do.

CREATE TABLE ledger.recurring_rules (
    id                  uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL,
    account_id          uuid        NOT NULL REFERENCES ledger.accounts (id),
    amount              bigint      NOT NULL,
    payee               text,
    description         text,
    category_id         uuid        REFERENCES ledger.categories (id) ON DELETE SET NULL,
    tags                text[]      NOT NULL DEFAULT '{}',
    frequency           text        NOT NULL CHECK (frequency IN ('daily', 'weekly', 'monthly', 'yearly')),
    interval            integer     NOT NULL CHECK (interval BETWEEN 1 AND 1000),
    start_date          date        NOT NULL,
    -- For monthly and yearly rules: the day wanted, clamped to each month's end.
    day_of_month        smallint    NOT NULL CHECK (day_of_month BETWEEN 1 AND 31),
    end_date            date,
    max_occurrences     integer     CHECK (max_occurrences >= 1),
    -- Occurrences created so far: the index of the next one.
    occurrences_created integer     NOT NULL DEFAULT 0,
    -- NULL once the rule has ended.
    next_occurrence     date,
    active              boolean     NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recurring_rules_user_idx ON ledger.recurring_rules (user_id, created_at);
CREATE INDEX recurring_rules_due_idx ON ledger.recurring_rules (next_occurrence) WHERE active AND next_occurrence IS NOT NULL;

ALTER TABLE ledger.transactions
    ADD CONSTRAINT transactions_recurring_rule_fk FOREIGN KEY (recurring_rule_id) REFERENCES ledger.recurring_rules (id) ON DELETE SET NULL;
