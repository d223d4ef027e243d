//! The ledger's events reach RabbitMQ through the outbox, an outage of the
//! broker loses neither writes nor events, and deployments sharing a broker
//! never see each other's events.

use std::time::Duration;

use freedumb_kit::Service;
use serde_json::{Value, json};

use crate::helpers::{TcpProxy, spawn_app, spawn_app_on, spawn_app_with};

#[tokio::test]
async fn writes_go_on_while_rabbitmq_is_away_and_every_event_arrives_after() {
    let mut proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let proxied = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let app = spawn_app_with(|env| {
        env.insert("RABBITMQ_URL".into(), proxied);
    })
    .await;
    let created = app.broker.watch("transaction.created").await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    app.spend(&user, &account, "-1.00", "2026-11-20").await;
    assert_eq!(app.broker.take_exactly(&created, 1, Duration::from_secs(15)).await.len(), 1);

    // Cutting before the relay has its confirm would (rightly) publish that
    // event again; wait until the outbox is drained.
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.db.url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ledger.outbox WHERE published_at IS NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // The broker goes away; writes keep succeeding.
    proxy.cut().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = app.spend(&user, &account, &format!("-{}.00", i + 2), "2026-11-21").await;
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    app.broker.assert_quiet(&created, Duration::from_millis(500)).await;
    assert_eq!(app.balance(&user, &account).await, "-21.00");

    // It comes back: every event written meanwhile is delivered.
    proxy.restore().await;
    let delivered = app.broker.take_exactly(&created, 5, Duration::from_secs(30)).await;
    let mut delivered_ids: Vec<String> =
        delivered.iter().map(|m| m.event().data["transaction_id"].as_str().unwrap().to_owned()).collect();
    delivered_ids.sort();
    ids.sort();
    assert_eq!(delivered_ids, ids);
    for message in &delivered {
        assert_eq!(message.delivery_mode, Some(2), "persistent");
        assert_eq!(message.event().data["amount_minor"].as_i64().map(|a| a < 0), Some(true));
        assert_eq!(message.event().data["version"], 1, "payloads carry their contract's version");
    }
}

#[tokio::test]
async fn two_deployments_on_one_broker_each_apply_all_of_their_own_events_and_none_of_the_others() {
    // Two platforms with one exchange between them, as two deployments with
    // the default EVENTS_EXCHANGE on one RabbitMQ have.
    let first = spawn_app().await;
    let shared = first.broker.exchange.clone();
    let second = spawn_app_with(|env| {
        env.insert("EVENTS_EXCHANGE".into(), shared.clone());
    })
    .await;

    // On each, a user with a budget on Food spends twelve times.
    let mut budgets = Vec::new();
    for app in [&first, &second] {
        let user = app.signed_in_user().await;
        let account = app.account(&user, "USD", "0").await;
        let categories = app.ok(&user, "GET", "/v1/categories", None).await;
        let food = categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Food").unwrap()["id"].clone();
        let today = chrono::Utc::now().date_naive().to_string();
        let budget = app
            .create_budget(
                &user,
                json!({"category_id": food, "currency": "USD", "amount": "500.00", "period": "monthly"}),
            )
            .await;
        for _ in 0..12 {
            app.ok(
                &user,
                "POST",
                "/v1/transactions",
                Some(json!({"account_id": account["id"], "amount": "-7.50", "date": today, "category_id": food})),
            )
            .await;
        }
        budgets.push((user, budget["id"].as_str().unwrap().to_owned()));
    }

    // Each budget counts every one of its own deployment's transactions.
    for (app, (user, id)) in [&first, &second].into_iter().zip(&budgets) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let budget = app.ok(user, "GET", &format!("/v1/budgets/{id}"), None).await;
            if budget["spent"] == "90.00" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "a budget missed its own events: {budget}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // And neither applied the other's: every spending row is a transaction
    // of its own ledger, and the other's events were counted as foreign.
    for app in [&first, &second] {
        let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.db.url).await.unwrap();
        let strangers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM budget.spending s
             WHERE NOT EXISTS (SELECT 1 FROM ledger.transactions t WHERE t.id = s.transaction_id)",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(strangers, 0, "a budget applied another deployment's transactions");
        let metrics = app.get("/metrics").await.text().await.unwrap();
        let foreign: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("events_consumed_total{") && l.contains(r#"outcome="foreign""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(foreign >= 12, "the other deployment's events are counted as foreign, not silently dropped: {foreign}");
    }
}

#[tokio::test]
async fn every_category_change_is_announced_with_a_versioned_payload() {
    let app = spawn_app().await;
    let announced = app.broker.watch("category.*").await;
    let user = app.signed_in_user().await;
    let me: Value = app.get_authed("/v1/auth/me", &user.access_token).await.json().await.unwrap();
    let user_id = me["id"].clone();

    // A user's first look at categories creates the defaults: each is announced.
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let defaults = categories["items"].as_array().unwrap().len();
    let created = app.broker.take_exactly(&announced, defaults, Duration::from_secs(15)).await;
    for message in &created {
        let event = message.event();
        assert_eq!(event.kind, "category.created");
        assert_eq!(event.data["version"], 1);
        assert_eq!(event.data["user_id"], user_id);
        let listed = categories["items"].as_array().unwrap().iter().find(|c| c["id"] == event.data["category_id"]);
        let listed = listed.expect("the event names a listed category");
        assert_eq!((&event.data["name"], &event.data["parent_id"]), (&listed["name"], &listed["parent_id"]));
    }

    let food = categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Food").unwrap()["id"].clone();
    let groceries =
        categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Groceries").unwrap()["id"].clone();
    let coffee = app.ok(&user, "POST", "/v1/categories", Some(json!({"name": "Coffee", "parent_id": food}))).await;
    let coffee_id = coffee["id"].clone();
    let path = format!("/v1/categories/{}", coffee_id.as_str().unwrap());
    app.ok(&user, "PATCH", &path, Some(json!({"name": "Café"}))).await;
    app.ok(&user, "POST", &format!("{path}/merge"), Some(json!({"into": groceries}))).await;
    let fees = categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Fees").unwrap()["id"].clone();
    app.ok(&user, "DELETE", &format!("/v1/categories/{}", fees.as_str().unwrap()), None).await;
    // Refused changes announce nothing.
    app.send(&user, "POST", "/v1/categories", Some(json!({"name": "Groceries", "parent_id": food}))).await;

    let mut changes: Vec<_> =
        app.broker.take_exactly(&announced, 4, Duration::from_secs(15)).await.iter().map(|m| m.event()).collect();
    app.broker.assert_quiet(&announced, Duration::from_millis(300)).await;
    // Delivery order is not guaranteed; recording order is in the ids.
    changes.sort_by_key(|event| event.id);
    let shapes: Vec<(String, Value)> = changes.into_iter().map(|event| (event.kind, event.data)).collect();
    assert_eq!(
        shapes,
        [
            (
                "category.created".to_owned(),
                json!({"version": 1, "category_id": coffee_id, "user_id": user_id, "name": "Coffee", "parent_id": food})
            ),
            (
                "category.renamed".to_owned(),
                json!({"version": 1, "category_id": coffee_id, "user_id": user_id, "name": "Café"})
            ),
            (
                "category.merged".to_owned(),
                json!({"version": 1, "category_id": coffee_id, "user_id": user_id, "into_category_id": groceries})
            ),
            ("category.deleted".to_owned(), json!({"version": 1, "category_id": fees, "user_id": user_id})),
        ]
    );
}

#[tokio::test]
async fn categories_from_before_category_events_reach_budgets_through_the_backfill() {
    // A user of an older deployment, whose categories exist in the ledger
    // but were never announced: their database is migrated up to the
    // migrations before the category events, and their categories written.
    let elsewhere = spawn_app().await;
    let user = elsewhere.signed_in_user().await;
    let me: Value = elsewhere.get_authed("/v1/auth/me", &user.access_token).await.json().await.unwrap();
    let user_id: uuid::Uuid = me["id"].as_str().unwrap().parse().unwrap();
    let db = crate::helpers::TestDatabase::create().await;
    for service in freedumb::registry::SERVICES {
        if service.schema() == freedumb_transaction::SCHEMA {
            db.migrate(service.schema(), &migrations_before_category_events().await).await;
        } else {
            db.migrate(service.schema(), service.migrator()).await;
        }
    }
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&db.url).await.unwrap();
    let (rent, old) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, name) in [(rent, "Rent"), (old, "Old stuff")] {
        sqlx::query("INSERT INTO ledger.categories (id, user_id, name) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(user_id)
            .bind(name)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO ledger.category_defaults (user_id) VALUES ($1)")
        .bind(user_id)
        .execute(&mut conn)
        .await
        .unwrap();

    // The upgrade: the new migrations, then the platform.
    db.migrate(freedumb_transaction::SCHEMA, freedumb_transaction::TransactionService.migrator()).await;
    let app = spawn_app_on(db, |_| {}).await;

    // Budgets learn the old categories without anyone touching them.
    for category in [rent, old] {
        app.create_budget(
            &user,
            json!({"category_id": category, "currency": "EUR", "amount": "700.00", "period": "monthly"}),
        )
        .await;
    }
}

/// The transaction service's migrations older than the category events'.
async fn migrations_before_category_events() -> sqlx::migrate::Migrator {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../transaction/migrations");
    let older = std::env::temp_dir().join(format!("freedumb-ledger-migrations-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&older).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < CATEGORY_EVENTS_MIGRATION {
            std::fs::copy(&path, older.join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(older.as_path()).await.unwrap();
    std::fs::remove_dir_all(&older).unwrap();
    assert!(migrator.iter().count() >= 2, "the older migrations are there");
    migrator
}

/// The migration that announces existing categories.
const CATEGORY_EVENTS_MIGRATION: &str = "20261203140001_category_events.sql";
