-- Every date the budget service stores is one the API can write: between
-- 1900-01-01 and 9999-12-31 (freedumb_kit::date). Requests are checked at
-- the edge; these constraints keep the invariant in the data too.
--
-- Before the range existed, a goal contribution could be dated 1000-01-01
-- or a target +10000-01-01. Such rows are moved to the nearest end of the
-- range, which keeps their meaning ("long ago", "far away") and lets the
-- constraints hold.

UPDATE budget.budgets SET starts_on = LEAST(GREATEST(starts_on, DATE '1900-01-01'), DATE '9999-12-31')
WHERE starts_on NOT BETWEEN DATE '1900-01-01' AND DATE '9999-12-31';
UPDATE budget.goals SET target_date = LEAST(GREATEST(target_date, DATE '1900-01-01'), DATE '9999-12-31')
WHERE target_date NOT BETWEEN DATE '1900-01-01' AND DATE '9999-12-31';
UPDATE budget.goal_contributions SET date = LEAST(GREATEST(date, DATE '1900-01-01'), DATE '9999-12-31')
WHERE date NOT BETWEEN DATE '1900-01-01' AND DATE '9999-12-31';

ALTER TABLE budget.budgets
    ADD CONSTRAINT budgets_starts_on_in_range CHECK (starts_on BETWEEN DATE '1900-01-01' AND DATE '9999-12-31');
ALTER TABLE budget.goals
    ADD CONSTRAINT goals_target_date_in_range CHECK (target_date BETWEEN DATE '1900-01-01' AND DATE '9999-12-31');
ALTER TABLE budget.goal_contributions
    ADD CONSTRAINT goal_contributions_date_in_range CHECK (date BETWEEN DATE '1900-01-01' AND DATE '9999-12-31');
