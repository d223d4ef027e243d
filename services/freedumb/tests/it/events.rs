//! The ledger's events reach RabbitMQ through the outbox, and an outage of
//! the broker loses neither writes nor events.

use std::time::Duration;

use crate::helpers::{TcpProxy, spawn_app_with};

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
