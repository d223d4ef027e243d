-- Categories are announced as `category.*` events (src/category_events.rs,
-- docs/events.md), from which the budget service keeps a projection of who
-- owns which category. Categories created before those events existed were
-- never announced, so this migration announces each of them once, through
-- the outbox like any event: the relay publishes them after the upgrade.
--
-- `ledger.announce_categories()` is also the documented replay: it records
-- a `category.created` for every existing category, which a projection
-- that missed some (a consumer whose queue did not exist yet when they were
-- published) applies without harm: `created` only adds what is missing,
-- and never revives a category it knows to be merged or deleted.
--
-- The payload is the one `category_events::Created` serialises, version 1.
-- Event ids are random (v4) rather than time-ordered (v7): consumers only
-- need them unique, and do not depend on the order of events.
CREATE FUNCTION ledger.announce_categories() RETURNS bigint
LANGUAGE sql AS $$
    WITH announced AS (
        INSERT INTO ledger.outbox (id, routing_key, payload)
        SELECT gen_random_uuid(), 'category.created', jsonb_build_object(
            'version', 1,
            'category_id', id,
            'user_id', user_id,
            'name', name,
            'parent_id', parent_id
        )
        FROM ledger.categories
        RETURNING 1
    )
    SELECT count(*) FROM announced
$$;

SELECT ledger.announce_categories();
