-- Payees per calendar month (`month` is its first day), kept beside
-- `daily_payees` by the same batches: a view over a year sums twelve
-- months of payees and the days of the two partial months at its ends,
-- instead of every day's (issue 13's benchmark: 100,000 transactions over
-- 400 payees took 90 ms to group by day, over the 50 ms target).
CREATE TABLE analytics.monthly_payees (
    user_id      uuid    NOT NULL,
    currency     text    NOT NULL,
    month        date    NOT NULL CHECK (extract(day FROM month) = 1),
    payee_key    text    NOT NULL,
    payee        text,
    amount_minor bigint  NOT NULL DEFAULT 0,
    transactions integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, currency, month, payee_key)
);

-- What the days already hold, the newest day's spelling per month.
INSERT INTO analytics.monthly_payees (user_id, currency, month, payee_key, payee, amount_minor, transactions)
SELECT user_id, currency, date_trunc('month', day)::date, payee_key,
       (array_agg(payee ORDER BY day DESC) FILTER (WHERE payee IS NOT NULL))[1],
       SUM(amount_minor), SUM(transactions)
FROM analytics.daily_payees
GROUP BY user_id, currency, date_trunc('month', day)::date, payee_key;
