//! Extractors whose rejections come back in our error shape.
//!
//! axum's own `Json`, `Path` and `Query` answer bad input with plain text.
//! These wrappers answer with [`ApiError`]: 400 for malformed syntax, 415 for
//! a wrong content type, 413 for an oversized body, and 422 with the failing
//! field's path for well-formed input of the wrong shape (unknown fields
//! included, since request types use `deny_unknown_fields`).

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};
use crate::text;

/// A JSON request body, or a JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !has_json_content_type(&req) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a request body with content type application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(bytes_rejection)?;
        parse_json(&bytes).map(Json)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn has_json_content_type(req: &Request) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        ApiError::bad_request("bad_request", "the request body could not be read")
    }
}

/// Deserialises a JSON request body, reporting where it went wrong.
///
/// Every body is an object (serde would otherwise build a struct from an
/// array: `["x", null]` as a category), every object inside it too (see
/// [`ObjectsOnly`]), and no string anywhere in it may carry NUL or another
/// control character but tab, line feed and carriage return
/// ([`text::forbidden_in_body`](crate::text::forbidden_in_body)). Messages
/// speak the API's terms ("expected an object"), never Rust's.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|err| {
        ApiError::bad_request(
            "malformed_json",
            format!("the request body is not valid JSON: {}", strip_position(&err.to_string())),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::validation(vec![FieldError::new("body", "must be a JSON object")]));
    }
    let mut bad = Vec::new();
    forbidden_strings(&value, &mut String::new(), &mut bad);
    if !bad.is_empty() {
        return Err(ApiError::validation(bad));
    }
    serde_path_to_error::deserialize(ObjectsOnly(&value)).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::validation(vec![FieldError::new(field, api_terms(&err.into_inner().to_string()))])
    })
}

/// Collects the paths of strings (and object keys) with forbidden characters.
fn forbidden_strings(value: &serde_json::Value, path: &mut String, bad: &mut Vec<FieldError>) {
    use serde_json::Value;
    let here = |path: &str| if path.is_empty() { "body".to_owned() } else { path.to_owned() };
    match value {
        Value::String(s) => {
            if let Err(message) = text::check_body_string(s) {
                bad.push(FieldError::new(here(path), message));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                forbidden_strings(item, path, bad);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let len = path.len();
                if text::check_body_string(key).is_err() {
                    bad.push(FieldError::new(here(path), "has a key with NUL or other control characters"));
                    continue;
                }
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                forbidden_strings(item, path, bad);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// serde_json appends " at line 1 column 17"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// serde's messages in the API's terms: JSON types, never Rust type names
/// ("expected struct CreateAccount with 5 elements", "untagged enum Column").
pub(crate) fn api_terms(message: &str) -> String {
    if message.starts_with("data did not match any variant") {
        return "does not match any of the accepted forms".to_owned();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while !rest.is_empty() {
        // Named Rust types: `struct Foo`, `struct Foo with 5 elements`, `enum Foo`, ...
        let named = [
            ("tuple struct ", "an array"),
            ("struct variant ", "an object"),
            ("tuple variant ", "an array"),
            ("unit struct ", "null"),
            ("newtype struct ", "a value"),
            ("struct ", "an object"),
            ("enum ", "one of the allowed values"),
        ];
        if let Some((prefix, replacement)) = named.iter().find(|(p, _)| rest.starts_with(p) && at_word_start(&out)) {
            let after = &rest[prefix.len()..];
            let ident_len = after.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(after.len());
            if ident_len > 0 && after.starts_with(|c: char| c.is_uppercase()) {
                out.push_str(replacement);
                rest = &after[ident_len..];
                if let Some(tail) = rest.strip_prefix(" with ") {
                    let n = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
                    for unit in [" elements", " element"] {
                        if n > 0 && tail[n..].starts_with(unit) {
                            rest = &tail[n + unit.len()..];
                            break;
                        }
                    }
                }
                continue;
            }
        }
        let primitive = [
            ("a sequence", "an array"),
            ("sequence", "an array"),
            ("a map", "an object"),
            ("map", "an object"),
            ("unit value", "null"),
            ("usize", "a non-negative integer"),
            ("u128", "a non-negative integer"),
            ("u64", "a non-negative integer"),
            ("u32", "a non-negative integer"),
            ("u16", "a non-negative integer"),
            ("u8", "a non-negative integer"),
            ("isize", "an integer"),
            ("i128", "an integer"),
            ("i64", "an integer"),
            ("i32", "an integer"),
            ("i16", "an integer"),
            ("i8", "an integer"),
            ("f64", "a number"),
            ("f32", "a number"),
            ("a borrowed string", "a string"),
        ];
        if let Some((word, replacement)) =
            primitive.iter().find(|(w, _)| rest.starts_with(w) && at_word_start(&out) && at_word_end(&rest[w.len()..]))
        {
            out.push_str(replacement);
            rest = &rest[word.len()..];
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn at_word_start(before: &str) -> bool {
    before.chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '`'))
}

fn at_word_end(after: &str) -> bool {
    after.chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '`'))
}

/// A deserializer over a parsed body that builds structs from JSON objects
/// only, at every depth. serde's derived structs also accept a sequence of
/// their fields (`[null, null]` as a budget update); the API has no such
/// form, and a client sending one has made a mistake we should name.
///
/// Numbers, strings and the rest are handed to `serde_json::Value`'s own
/// deserializer. Untagged enums buffer their input and are deserialized by
/// serde's internal `Content`, so inside one the check does not apply.
pub struct ObjectsOnly<'a>(pub &'a serde_json::Value);

mod objects_only {
    use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
    use serde::forward_to_deserialize_any;
    use serde_json::{Error, Value};

    use super::ObjectsOnly;

    impl<'de> de::Deserializer<'de> for ObjectsOnly<'de> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::Array(items) => visitor.visit_seq(Seq(items.iter())),
                Value::Object(map) => visitor.visit_map(Map { iter: map.iter(), value: None }),
                Value::String(s) => visitor.visit_str(s),
                // JSON has one number type, and JSON Schema counts `38.0` as
                // an integer; serde would refuse it where an integer goes.
                Value::Number(n) => match whole_number(n) {
                    Some(Whole::Unsigned(u)) => visitor.visit_u64(u),
                    Some(Whole::Signed(i)) => visitor.visit_i64(i),
                    None => de::Deserializer::deserialize_any(self.0, visitor),
                },
                other => de::Deserializer::deserialize_any(other, visitor),
            }
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.0 {
                Value::Object(map) => visitor.visit_map(Map { iter: map.iter(), value: None }),
                other => Err(de::Error::invalid_type(unexpected(other), &"an object")),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                Value::Null => visitor.visit_none(),
                _ => visitor.visit_some(self),
            }
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.0 {
                Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
                Value::Object(map) if map.len() == 1 => {
                    let (variant, value) = map.iter().next().expect("one entry");
                    visitor.visit_enum(Enum { variant, value })
                }
                other => Err(de::Error::invalid_type(unexpected(other), &"one of the allowed values")),
            }
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
        }
    }

    enum Whole {
        Unsigned(u64),
        Signed(i64),
    }

    /// A number written with a zero fraction (`38.0`) as the integer it is,
    /// within the range a double holds exactly.
    fn whole_number(n: &serde_json::Number) -> Option<Whole> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        let f = n.as_f64().filter(|_| n.is_f64())?;
        if f.fract() != 0.0 || f.abs() > EXACT {
            return None;
        }
        // Within ±2^53 the conversions are exact.
        Some(if f >= 0.0 { Whole::Unsigned(f as u64) } else { Whole::Signed(f as i64) })
    }

    fn unexpected(value: &Value) -> de::Unexpected<'_> {
        match value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => de::Unexpected::Unsigned(u),
                (_, Some(i), _) => de::Unexpected::Signed(i),
                (_, _, Some(f)) => de::Unexpected::Float(f),
                _ => de::Unexpected::Other("number"),
            },
            Value::String(s) => de::Unexpected::Str(s),
            Value::Array(_) => de::Unexpected::Seq,
            Value::Object(_) => de::Unexpected::Map,
        }
    }

    struct Seq<'a>(std::slice::Iter<'a, Value>);

    impl<'de> de::SeqAccess<'de> for Seq<'de> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
            self.0.next().map(|v| seed.deserialize(ObjectsOnly(v))).transpose()
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.0.len())
        }
    }

    struct Map<'a> {
        iter: serde_json::map::Iter<'a>,
        value: Option<&'a Value>,
    }

    impl<'de> de::MapAccess<'de> for Map<'de> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
            match self.iter.next() {
                Some((key, value)) => {
                    self.value = Some(value);
                    seed.deserialize(key.as_str().into_deserializer()).map(Some)
                }
                None => Ok(None),
            }
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            let value = self.value.take().ok_or_else(|| de::Error::custom("value requested before its key"))?;
            seed.deserialize(ObjectsOnly(value))
        }
    }

    struct Enum<'a> {
        variant: &'a str,
        value: &'a Value,
    }

    impl<'de> de::EnumAccess<'de> for Enum<'de> {
        type Error = Error;
        type Variant = ObjectsOnly<'de>;

        fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant), Error> {
            let variant = seed.deserialize(self.variant.into_deserializer())?;
            Ok((variant, ObjectsOnly(self.value)))
        }
    }

    impl<'de> de::VariantAccess<'de> for ObjectsOnly<'de> {
        type Error = Error;

        fn unit_variant(self) -> Result<(), Error> {
            match self.0 {
                Value::Null => Ok(()),
                other => Err(de::Error::invalid_type(unexpected(other), &"null")),
            }
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
            seed.deserialize(self)
        }

        fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
            de::Deserializer::deserialize_seq(self, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            de::Deserializer::deserialize_struct(self, "", fields, visitor)
        }
    }
}

/// Path parameters; a malformed one (say, not a UUID) is a 400 naming it.
///
/// A segment carrying a control character (`%00` included) is refused
/// before it is parsed, whatever type it becomes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Ok(raw) = axum::extract::RawPathParams::from_request_parts(parts, state).await {
            let bad: Vec<FieldError> = raw
                .iter()
                .filter_map(|(name, value)| text::check_line(value).err().map(|m| FieldError::new(name, m)))
                .collect();
            if !bad.is_empty() {
                return Err(
                    ApiError::bad_request("invalid_path_parameter", "a path parameter is malformed").with_details(bad)
                );
            }
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                Err(ApiError::bad_request("invalid_path_parameter", api_terms(&err.body_text())))
            }
            Err(other) => Err(ApiError::internal(anyhow::anyhow!("path extraction failed: {}", other.body_text()))),
        }
    }
}

/// Query parameters; bad ones are a 400 whose `details` name the parameter.
///
/// A 400 rather than the body's 422: a query is part of the request's
/// address, and a malformed address is a malformed request. A value (or a
/// name) with a control character (`?q=a%00b`) is refused before it is
/// parsed, as text fields in bodies are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

/// Deserialises a query string, naming the parameter that is wrong.
pub fn parse_query<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    let invalid = |details: Vec<FieldError>| {
        let message = match details.as_slice() {
            [one] => format!("query parameter `{}` {}", one.field, one.message),
            _ => "some query parameters are malformed".to_owned(),
        };
        ApiError::bad_request("invalid_query", message).with_details(details)
    };
    let mut bad = Vec::new();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        if text::check_line(&name).is_err() {
            bad.push(FieldError::new("query", "a parameter name has NUL or other control characters"));
        } else if let Err(message) = text::check_line(&value) {
            bad.push(FieldError::new(name.into_owned(), message));
        }
    }
    if !bad.is_empty() {
        return Err(invalid(bad));
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "query".to_owned() } else { path };
        invalid(vec![FieldError::new(field, api_terms(&err.into_inner().to_string()))])
    })
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        email: String,
        password: String,
    }

    #[test]
    fn broken_json_is_a_bad_request() {
        let err = parse_json::<Login>(br#"{"email": "a@b.c", "#).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), "malformed_json");
    }

    #[test]
    fn an_unknown_field_is_named() {
        let err = parse_json::<Login>(br#"{"email": "a@b.c", "password": "x", "admin": true}"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let response = err.into_response();
        let report = response.extensions().get::<crate::error::ErrorReport>().unwrap();
        assert!(report.body.details[0].message.contains("unknown field `admin`"), "{:?}", report.body.details);
    }

    fn details(err: ApiError) -> Vec<FieldError> {
        let response = err.into_response();
        response.extensions().get::<crate::error::ErrorReport>().unwrap().body.details.clone()
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Budget {
        name: String,
        limit: Option<Limit>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Limit {
        amount: String,
        currency: String,
    }

    #[test]
    fn an_array_is_not_an_object_at_the_top() {
        let err = parse_json::<Budget>(br#"["x", null]"#).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let details = details(err);
        assert_eq!((details[0].field.as_str(), details[0].message.as_str()), ("body", "must be a JSON object"));
    }

    #[test]
    fn an_array_is_not_an_object_inside_either() {
        let err = parse_json::<Budget>(br#"{"name": "x", "limit": ["1.00", "EUR"]}"#).unwrap_err();
        let details = details(err);
        assert_eq!(details[0].field, "limit");
        assert_eq!(details[0].message, "invalid type: an array, expected an object");
    }

    #[test]
    fn messages_name_json_types_not_rust_ones() {
        let message = |body: &[u8]| details(parse_json::<Budget>(body).unwrap_err())[0].message.clone();
        for body in [&br#"{"name": 1}"#[..], br#"{"name": "x", "limit": 5}"#, br#"{"name": "x", "limit": "5"}"#] {
            let message = message(body);
            for rust in ["struct", "Limit", "Budget", "sequence", "map", "u64", "i64"] {
                assert!(!message.contains(rust), "{message}");
            }
        }
        assert_eq!(
            api_terms("invalid type: sequence, expected struct CreateAccount with 5 elements"),
            "invalid type: an array, expected an object"
        );
        assert_eq!(
            api_terms("invalid value: integer `-1`, expected u32"),
            "invalid value: integer `-1`, expected a non-negative integer"
        );
        assert_eq!(
            api_terms("data did not match any variant of untagged enum Column"),
            "does not match any of the accepted forms"
        );
    }

    #[test]
    fn a_whole_number_with_a_zero_fraction_is_an_integer() {
        #[derive(Debug, Deserialize)]
        struct Rule {
            interval: u32,
            offset: i32,
        }
        let rule = parse_json::<Rule>(br#"{"interval": 38.0, "offset": -2.0}"#).unwrap();
        assert_eq!((rule.interval, rule.offset), (38, -2));
        let err = parse_json::<Rule>(br#"{"interval": 38.5, "offset": 0}"#).unwrap_err();
        assert_eq!(details(err)[0].field, "interval");
    }

    #[test]
    fn a_nul_byte_anywhere_in_a_body_is_a_422_naming_the_field() {
        let err = parse_json::<Budget>(br#"{"name": "a\u0000b", "limit": {"amount": "1", "currency": "E\u0007"}}"#)
            .unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<String> = details(err).into_iter().map(|d| d.field).collect();
        assert_eq!(fields, ["name", "limit.currency"]);
    }

    #[test]
    fn tabs_and_line_breaks_pass_the_body_check() {
        let budget = parse_json::<Budget>(br#"{"name": "a\tb\r\nc"}"#).unwrap();
        assert_eq!(budget.name, "a\tb\r\nc");
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Search {
        q: Option<String>,
        limit: Option<u32>,
    }

    #[test]
    fn a_nul_byte_in_a_query_parameter_is_a_400_naming_it() {
        let err = parse_query::<Search>("q=a%00b").unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), "invalid_query");
        assert_eq!(details(err)[0].field, "q");
    }

    #[test]
    fn a_malformed_query_parameter_is_named_in_api_terms() {
        let err = parse_query::<Search>("limit=-3").unwrap_err();
        let details = details(err);
        assert_eq!(details[0].field, "limit");
        assert!(!details[0].message.contains("u32"), "{}", details[0].message);
        assert_eq!(parse_query::<Search>("q=caf%C3%A9&limit=3").unwrap().q.as_deref(), Some("café"));
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err = parse_json::<Login>(br#"{"email": 42, "password": "x"}"#).unwrap_err();
        let response = err.into_response();
        let report = response.extensions().get::<crate::error::ErrorReport>().unwrap();
        assert_eq!(report.body.details[0].field, "email");
    }
}
