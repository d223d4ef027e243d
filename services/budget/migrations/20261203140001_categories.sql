-- What the budget service knows of the ledger's categories, from the
-- `category.*` events (src/categories.rs): which user each belongs to, and
-- whether it is gone. Budgets are refused on categories that are not here,
-- not the caller's, or removed. Never read from the ledger's schema.
CREATE TABLE budget.categories (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL,
    -- Set by category.merged or category.deleted, and final: a late
    -- created or renamed never brings the category back.
    removed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
