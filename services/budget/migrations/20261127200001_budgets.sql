-- Budgets, goals, and the spending they are measured against. The budget
-- service owns the `budget` schema. Amounts are bigint minor units.

CREATE TABLE budget.budgets (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    -- A category of the transaction service's; opaque here.
    category_id uuid        NOT NULL,
    currency    char(3)     NOT NULL,
    amount      bigint      NOT NULL CHECK (amount > 0),
    period      text        NOT NULL CHECK (period IN ('weekly', 'monthly', 'yearly')),
    rollover    boolean     NOT NULL DEFAULT false,
    -- The first day of the first period; rollover counts from here.
    starts_on   date        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, category_id, period)
);

-- The spending side of every transaction the ledger has announced, one row
-- per category allocation, kept current from transaction.* events.
CREATE TABLE budget.spending (
    transaction_id     uuid     NOT NULL,
    position           smallint NOT NULL,
    user_id            uuid     NOT NULL,
    category_id        uuid,
    parent_category_id uuid,
    currency           char(3)  NOT NULL,
    date               date     NOT NULL,
    amount             bigint   NOT NULL,
    PRIMARY KEY (transaction_id, position)
);
CREATE INDEX spending_category_idx ON budget.spending (user_id, category_id, date);
CREATE INDEX spending_parent_idx ON budget.spending (user_id, parent_category_id, date) WHERE parent_category_id IS NOT NULL;

-- Thresholds already announced: once per budget, period and threshold.
CREATE TABLE budget.threshold_crossings (
    budget_id    uuid        NOT NULL REFERENCES budget.budgets (id) ON DELETE CASCADE,
    period_start date        NOT NULL,
    threshold    smallint    NOT NULL,
    crossed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, period_start, threshold)
);

CREATE TABLE budget.goals (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL,
    name          text        NOT NULL,
    currency      char(3)     NOT NULL,
    target_amount bigint      NOT NULL CHECK (target_amount > 0),
    target_date   date,
    reached_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX goals_user_idx ON budget.goals (user_id, created_at);

CREATE TABLE budget.goal_contributions (
    id         uuid        PRIMARY KEY,
    goal_id    uuid        NOT NULL REFERENCES budget.goals (id) ON DELETE CASCADE,
    -- Negative for a withdrawal.
    amount     bigint      NOT NULL,
    date       date        NOT NULL,
    note       text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX goal_contributions_goal_idx ON budget.goal_contributions (goal_id, date);

-- Bumped in every transaction that changes what a user's budget summaries
-- show; cached summaries are keyed by it (see src/summary.rs).
CREATE TABLE budget.summary_versions (
    user_id uuid   PRIMARY KEY,
    version bigint NOT NULL
);
