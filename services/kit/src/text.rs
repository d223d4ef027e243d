//! Text that a request may carry: the one place that decides which
//! characters the platform stores.
//!
//! Postgres `text` refuses NUL, and control characters in a name or a payee
//! break logs, CSV exports and terminals later, so they are refused at the
//! edge with a 422 naming the field:
//!
//! - Everywhere (every JSON string the [`Json`](crate::extract::Json)
//!   extractor sees, every query parameter and path segment): NUL and every
//!   other control character (C0, DEL, C1), except tab, line feed and
//!   carriage return in bodies, which multi-line fields and CSV need.
//! - [`Line<MIN, MAX>`]: a single line (names, payees, tags). Trimmed; no
//!   control character at all; `MIN..=MAX` characters after trimming.
//! - [`Text<MAX>`]: multi-line prose (notes). Trimmed; tab, line feed and
//!   carriage return allowed, no other control character; at most `MAX`
//!   characters.
//!
//! Lengths count Unicode scalar values, as JSON Schema's `minLength` and
//! `maxLength` do, and both types state their rules in their OpenAPI schema
//! (`minLength`, `maxLength`, `pattern`), so the document says what the
//! server enforces.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// What a string field may never contain, whatever its type.
pub const FORBIDDEN_MESSAGE: &str = "must not contain NUL or other control characters";
const MULTILINE_FORBIDDEN_MESSAGE: &str =
    "must not contain NUL or control characters other than tab, line feed and carriage return";
const SINGLE_LINE_MESSAGE: &str = "must be a single line without control characters";

/// Whether `c` is refused in every string of a request body: a control
/// character other than tab, line feed and carriage return.
pub fn forbidden_in_body(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// Whether `c` is refused in a single-line value (a [`Line`], a query
/// parameter, a path segment): any control character.
pub fn forbidden_in_line(c: char) -> bool {
    c.is_control()
}

/// The first problem with a body string, if any.
pub fn check_body_string(s: &str) -> Result<(), &'static str> {
    if s.chars().any(forbidden_in_body) { Err(FORBIDDEN_MESSAGE) } else { Ok(()) }
}

/// The first problem with a single-line string (query parameters, path
/// segments), if any.
pub fn check_line(s: &str) -> Result<(), &'static str> {
    if s.chars().any(forbidden_in_line) { Err(FORBIDDEN_MESSAGE) } else { Ok(()) }
}

// ECMA-262 (and Python) regular expressions for the schemas. `\s` at the
// ends mirrors the trimming: what is left must be long enough.
const LINE_CHARS: &str = r"[^\u0000-\u001f\u007f-\u009f]";
const TEXT_CHARS: &str = r"[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]";
/// [`forbidden_in_body`] as a schema pattern: what every body string obeys.
pub const BODY_PATTERN: &str = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$";
/// [`forbidden_in_line`] as a schema pattern: what every query, path and
/// header value obeys.
pub const LINE_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";
const LINE_NONSPACE: &str = r"[^\s\u0000-\u001f\u007f-\u009f]";

/// A single line of text of `MIN..=MAX` characters after trimming, with no
/// control characters: names, payees, descriptions, tags.
///
/// `MIN = 0` allows the empty string; a service that treats empty as absent
/// says so with [`Line::non_empty`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line<const MIN: usize, const MAX: usize>(String);

impl<const MIN: usize, const MAX: usize> Line<MIN, MAX> {
    /// Trims `raw` and checks it, or says why not (a lower-case fragment to
    /// follow the field's name).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().any(forbidden_in_line) {
            return Err(SINGLE_LINE_MESSAGE.to_owned());
        }
        let trimmed = raw.trim();
        let n = trimmed.chars().count();
        if n < MIN || n > MAX {
            return Err(length_message(MIN, MAX));
        }
        Ok(Line(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// `None` for the empty line: optional fields where an empty string
    /// means "none".
    pub fn non_empty(self) -> Option<String> {
        if self.0.is_empty() { None } else { Some(self.0) }
    }
}

/// A multi-line text of at most `MAX` characters after trimming: tab, line
/// feed and carriage return allowed, no other control character.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Text<MAX> {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.chars().any(forbidden_in_body) {
            return Err(MULTILINE_FORBIDDEN_MESSAGE.to_owned());
        }
        let trimmed = raw.trim();
        if trimmed.chars().count() > MAX {
            return Err(length_message(0, MAX));
        }
        Ok(Text(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `None` for the empty text.
    pub fn non_empty(self) -> Option<String> {
        if self.0.is_empty() { None } else { Some(self.0) }
    }
}

fn length_message(min: usize, max: usize) -> String {
    match min {
        0 => format!("must be at most {max} characters"),
        1 if max == 1 => "must be 1 character".to_owned(),
        _ => format!("must be {min} to {max} characters"),
    }
}

macro_rules! string_impls {
    ($ty:ident < $(const $p:ident : usize),* >) => {
        impl<$(const $p: usize),*> fmt::Debug for $ty<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl<$(const $p: usize),*> fmt::Display for $ty<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<$(const $p: usize),*> std::ops::Deref for $ty<$($p),*> {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl<$(const $p: usize),*> Serialize for $ty<$($p),*> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de, $(const $p: usize),*> Deserialize<'de> for $ty<$($p),*> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Cow::<'de, str>::deserialize(d).map_err(|_| {
                    serde::de::Error::custom("expected a string")
                })?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_impls!(Line<const MIN: usize, const MAX: usize>);
string_impls!(Text<const MAX: usize>);

impl<const MIN: usize, const MAX: usize> PartialSchema for Line<MIN, MAX> {
    fn schema() -> RefOr<Schema> {
        let pattern =
            if MIN == 0 { format!("^{LINE_CHARS}*$") } else { format!("^{LINE_CHARS}*{LINE_NONSPACE}{LINE_CHARS}*$") };
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(MIN))
            .max_length(Some(MAX))
            .pattern(Some(pattern))
            .description(Some(format!(
                "A single line of {MIN} to {MAX} characters after trimming surrounding white space; \
                 control characters (NUL, line breaks, tabs) are refused."
            )))
            .into()
    }
}

impl<const MIN: usize, const MAX: usize> ToSchema for Line<MIN, MAX> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("Line{MIN}To{MAX}"))
    }
}

impl<const MAX: usize> PartialSchema for Text<MAX> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(MAX))
            .pattern(Some(format!("^{TEXT_CHARS}*$")))
            .description(Some(format!(
                "Text of at most {MAX} characters after trimming; tab, line feed and carriage return \
                 are allowed, other control characters (NUL included) are refused."
            )))
            .into()
    }
}

impl<const MAX: usize> ToSchema for Text<MAX> {
    fn name() -> Cow<'static, str> {
        Cow::Owned(format!("Text{MAX}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Name = Line<1, 60>;

    #[test]
    fn a_line_is_trimmed() {
        assert_eq!(Name::parse("  Groceries ").unwrap().as_str(), "Groceries");
    }

    #[test]
    fn a_nul_byte_is_refused_everywhere() {
        assert!(Name::parse("a\0b").is_err());
        assert!(Text::<500>::parse("a\0b").is_err());
        assert!(check_body_string("a\0b").is_err());
        assert!(check_line("a\0b").is_err());
    }

    #[test]
    fn a_line_refuses_line_breaks_and_tabs_but_a_text_allows_them() {
        assert!(Name::parse("a\nb").is_err());
        assert!(Name::parse("a\tb").is_err());
        assert_eq!(Text::<500>::parse("first\n\tsecond\r\n").unwrap().as_str(), "first\n\tsecond");
        assert!(Text::<500>::parse("bell\u{7}").is_err());
    }

    #[test]
    fn other_control_characters_are_refused() {
        for c in ['\u{1}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}'] {
            assert!(Name::parse(&format!("a{c}b")).is_err(), "{c:?}");
            assert!(check_body_string(&format!("a{c}b")).is_err(), "{c:?}");
        }
        assert!(check_body_string("tab\tline\ncr\r").is_ok());
    }

    #[test]
    fn whitespace_only_names_are_rejected() {
        assert_eq!(Name::parse("   ").unwrap_err(), "must be 1 to 60 characters");
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(Name::parse(&"é".repeat(60)).is_ok());
        assert!(Name::parse(&"é".repeat(61)).is_err());
    }

    #[test]
    fn the_error_message_is_a_fragment_serde_reports_at_the_field() {
        let err = serde_json::from_str::<Name>("\"a\\u0000b\"").unwrap_err();
        assert!(err.to_string().starts_with(SINGLE_LINE_MESSAGE), "{err}");
    }

    #[test]
    fn the_schema_states_the_rules() {
        let json = serde_json::to_value(Name::schema()).unwrap();
        assert_eq!(json["minLength"], 1);
        assert_eq!(json["maxLength"], 60);
        let pattern = json["pattern"].as_str().unwrap();
        assert!(pattern.contains(r"\u0000-\u001f"), "{pattern}");
        assert_eq!(Name::name(), "Line1To60");
    }
}
