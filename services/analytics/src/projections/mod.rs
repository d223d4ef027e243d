//! The consumers that keep the `analytics` schema's read models, one per
//! queue of [`crate::SUBSCRIPTIONS`].
//!
//! Whole-state events (accounts, transactions, budgets, recurring rules)
//! are applied only when newer than the row's `as_of`, the `occurred_at`
//! of the last event applied, so that any order of delivery converges on
//! the newest state; deletions leave tombstones that nothing revives.
//! `category.*` events are facts, each kept on its own terms (see
//! `ledger`).

pub mod budgets;
pub mod investments;
pub mod ledger;
pub mod transactions;

use freedumb_kit::events::{Event, HandleError};
use freedumb_kit::money::Currency;
use serde::Deserialize;

/// The payload version of every event this build understands.
const VERSION: u32 = 1;

#[derive(Deserialize)]
struct Versioned {
    /// Absent only in events recorded before payloads were versioned,
    /// which are version 1.
    #[serde(default = "first_version")]
    version: u32,
}

fn first_version() -> u32 {
    1
}

/// The payload as `T`, once its version is known to be one this build
/// reads. Another version is dead-lettered, to be replayed once analytics
/// understands it, rather than misread.
fn payload<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, HandleError> {
    let Versioned { version } = event.data_as()?;
    if version != VERSION {
        return Err(HandleError::poison(anyhow::anyhow!(
            "a {} event has payload version {version}, and analytics understands {VERSION}",
            event.kind
        )));
    }
    event.data_as()
}

/// A currency code from a payload; an unknown one is poison.
fn currency(event: &Event, code: &str) -> Result<Currency, HandleError> {
    Currency::from_code(code).ok_or_else(|| {
        HandleError::poison(anyhow::anyhow!("a {} event names the unknown currency {code:?}", event.kind))
    })
}
