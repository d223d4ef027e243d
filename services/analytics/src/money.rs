//! Money in the answers: an amount and its currency, shown as the decimal
//! string the currency's minor unit gives (`"-12.34"`, `"1500"` for JPY).

use std::borrow::Cow;
use std::fmt;

use freedumb_kit::money::Currency;
use serde::{Serialize, Serializer};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// Integer minor units of one currency. Serialised through
/// [`Currency::format`]; report jobs read [`Money::minor`] for charts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    pub fn new(currency: Currency, minor: i64) -> Self {
        Money { minor, currency }
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.currency.format(self.minor))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The kit's signed `Amount`, under its name, so the document has one.
impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        freedumb_kit::openapi::Amount::schema()
    }
}

impl ToSchema for Money {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Amount")
    }
}

/// A currency code read back from this schema; every one was checked when
/// its event was applied.
#[allow(dead_code)]
pub(crate) fn currency(code: &str) -> anyhow::Result<Currency> {
    Currency::from_code(code).ok_or_else(|| anyhow::anyhow!("the analytics schema holds an unknown currency {code:?}"))
}
