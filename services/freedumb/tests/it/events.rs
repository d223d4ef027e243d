//! The ledger's events reach RabbitMQ through the outbox, an outage of the
//! broker loses neither writes nor events, and deployments sharing a broker
//! never see each other's events.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{TcpProxy, spawn_app, spawn_app_with};

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
