//! The events the auth service records: `user.registered`, what other
//! services (notifications, analytics) learn of a new account.
//!
//! It is written to `auth.outbox` in the registration's transaction
//! (`freedumb_kit::events::record`) and relayed to RabbitMQ by the service's
//! relay. `version` is the version of the payload's contract: adding a field
//! keeps it, changing or removing one raises it. `docs/events.md` is the
//! reference.
//!
//! The live event and the snapshot ([`snapshot`]) build the payload with
//! the one function [`Registered::of`], so a consumer that catches up from a
//! snapshot reads exactly what it would have read live.

use anyhow::Context;
use chrono::{DateTime, Utc};
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::SCHEMA;
use crate::routes::User;

pub const REGISTERED: &str = "user.registered";

/// The version of the `user.registered` payload.
pub const VERSION: u32 = 1;

/// The payload of `user.registered`.
#[derive(Debug, Serialize)]
pub struct Registered<'a> {
    pub version: u32,
    pub user_id: Uuid,
    /// As stored: trimmed and lower-cased.
    pub email: &'a str,
    pub registered_at: DateTime<Utc>,
}

impl<'a> Registered<'a> {
    pub(crate) fn of(user: &'a User) -> Self {
        Registered { version: VERSION, user_id: user.id, email: &user.email, registered_at: user.created_at }
    }
}

/// Records `user.registered` on the registration's open transaction.
pub(crate) async fn registered(conn: &mut PgConnection, user: &User) -> anyhow::Result<()> {
    freedumb_kit::events::record(conn, SCHEMA, REGISTERED, &Registered::of(user)).await?;
    Ok(())
}

/// One `user.registered` per user, read in one pass (streamed, never loaded
/// whole) in id order.
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    sqlx::query_as::<_, User>("SELECT id, email, created_at FROM auth.users ORDER BY id")
        .fetch(&db.pool)
        .map(|user| {
            let user = user.context("failed to read a user for the snapshot")?;
            SnapshotEvent::new(REGISTERED, &Registered::of(&user))
        })
        .boxed()
}
