//! What every service's OpenAPI document shares, written once.
//!
//! - [`complete`] states on every string a request may carry (bodies,
//!   queries, paths, headers) the kit's rule against control characters
//!   ([`crate::text`]), unless its schema already has a pattern, a format or
//!   an enum; and it adds to each operation the error answers it can give
//!   because of what it is: protected (401, and 503 while Redis cannot say
//!   whether the token's sign-in has ended), taking a JSON body (400, 413,
//!   415, 422), naming a resource in its path (400, 404), taking a query
//!   (400), honouring `Idempotency-Key` (400, 409, 422), and what any request
//!   can meet (408, 500). A handler's `#[utoipa::path]` lists only what is its
//!   own: its success and the answers whose description says more; those
//!   keep their description, with the common causes appended.
//! - Schemas of values many request types carry, so a rule is stated in one
//!   place: [`Amount`], [`PositiveAmount`], [`NonZeroAmount`], [`NonNegativeAmount`],
//!   [`CurrencyCode`]. Fields keep their Rust type and point at the schema
//!   with `#[schema(value_type = freedumb_kit::openapi::Amount)]`.
//!
//! The contract test (`services/freedumb/tests/it/contract.rs`) runs
//! schemathesis against the document: a pattern that admits what the server
//! refuses, or refuses what it admits, fails it.

use std::collections::{BTreeMap, BTreeSet};

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::money::Currency;
use crate::text;

/// States the text rule on request strings and adds the common error
/// answers to every operation of `doc`.
pub fn complete(doc: &mut OpenApi) {
    let mut referenced = BTreeSet::new();
    for item in doc.paths.paths.values_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if let Some(schema) = &mut parameter.schema {
                    // A query, path or header value is one line.
                    state_text_rule(schema, text::LINE_PATTERN, &mut referenced);
                }
            }
            if let Some(body) = &mut operation.request_body {
                for content in body.content.values_mut() {
                    if let Some(schema) = &mut content.schema {
                        state_text_rule(schema, text::BODY_PATTERN, &mut referenced);
                    }
                }
            }
            add_common_responses(operation);
        }
    }
    // The components the requests use, and the ones those use in turn.
    let Some(components) = &mut doc.components else { return };
    let mut done = BTreeSet::new();
    while let Some(name) = referenced.iter().find(|name| !done.contains(*name)).cloned() {
        done.insert(name.clone());
        if let Some(schema) = components.schemas.get_mut(&name) {
            state_text_rule(schema, text::BODY_PATTERN, &mut referenced);
        }
    }
}

/// Gives every string schema under `schema` without a pattern, format or
/// enum the `pattern`, and collects the names of the components it refers to.
fn state_text_rule(schema: &mut RefOr<Schema>, pattern: &str, referenced: &mut BTreeSet<String>) {
    let schema = match schema {
        RefOr::Ref(reference) => {
            if let Some(name) = reference.ref_location.strip_prefix("#/components/schemas/") {
                referenced.insert(name.to_owned());
            }
            return;
        }
        RefOr::T(schema) => schema,
    };
    match schema {
        Schema::Object(object) => {
            let is_string = match &object.schema_type {
                SchemaType::Type(Type::String) => true,
                SchemaType::Array(types) => types.contains(&Type::String),
                _ => false,
            };
            if is_string && object.pattern.is_none() && object.format.is_none() && object.enum_values.is_none() {
                object.pattern = Some(pattern.to_owned());
            }
            for property in object.properties.values_mut() {
                state_text_rule(property, pattern, referenced);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                state_text_rule(items, pattern, referenced);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(|s| state_text_rule(s, pattern, referenced)),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(|s| state_text_rule(s, pattern, referenced)),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(|s| state_text_rule(s, pattern, referenced)),
        _ => {}
    }
}

/// Why an operation can answer each status, from its declaration alone.
fn common_causes(operation: &Operation) -> BTreeMap<u16, Vec<&'static str>> {
    let mut causes: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    let mut add = |status: u16, cause: &'static str| causes.entry(status).or_default().push(cause);
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        add(401, "the access token is missing, malformed, expired or revoked");
        add(
            503,
            "Redis, which holds the ended sign-ins, is unreachable, so no token can be trusted; retry after `Retry-After` seconds",
        );
    }
    let json_body = operation.request_body.as_ref().is_some_and(|b| b.content.keys().any(|c| c == "application/json"));
    if json_body {
        add(400, "the body is not valid JSON");
        add(413, "the body is larger than 10 MiB");
        add(415, "the body's content type is not application/json");
        add(
            422,
            "the body is not a JSON object, or a field is missing, of the wrong type or breaks its rule; `details` names each field",
        );
    }
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    if parameters.iter().any(|p| p.parameter_in == ParameterIn::Path) {
        add(400, "a path parameter is malformed (an id that is not a UUID)");
        add(404, "no such resource, or it belongs to another user");
    }
    if parameters.iter().any(|p| p.parameter_in == ParameterIn::Query) {
        add(400, "a query parameter is malformed or out of range");
    }
    if parameters
        .iter()
        .any(|p| p.parameter_in == ParameterIn::Header && p.name.eq_ignore_ascii_case("idempotency-key"))
    {
        add(400, "the Idempotency-Key header is malformed");
        add(409, "a request with this Idempotency-Key is still in progress");
        add(422, "this Idempotency-Key was used for a request with another body");
    }
    add(408, "the request took longer than the server's request timeout");
    add(500, "an internal error; quote `request_id` when reporting it");
    causes
}

fn add_common_responses(operation: &mut Operation) {
    for (status, causes) in common_causes(operation) {
        let causes = causes.join("; ");
        match operation.responses.responses.get_mut(&status.to_string()) {
            // The handler's own description comes first: it is the more specific.
            Some(RefOr::T(response)) => {
                response.description = format!("{}; also: {causes}", response.description);
            }
            Some(RefOr::Ref(_)) => {}
            None => {
                operation.responses.responses.insert(status.to_string(), RefOr::T(error_response(status, causes)));
            }
        }
    }
}

/// An `ErrorBody` answer, with the headers its status carries.
pub fn error_response(status: u16, description: String) -> Response {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/json", body);
    if status == 401 {
        let challenge = ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["Bearer"]));
        response = response.header(
            "WWW-Authenticate",
            HeaderBuilder::new().schema(challenge).description(Some("always `Bearer` (RFC 6750)")).build(),
        );
    }
    if status == 429 || status == 503 {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
        response = response.header(
            "Retry-After",
            HeaderBuilder::new().schema(seconds).description(Some("seconds to wait before retrying")).build(),
        );
    }
    response.build()
}

/// The whole part of an amount: at most 16 digits (10^15 minor units of a
/// currency without decimals), no leading zeros.
const WHOLE: &str = "(0|[1-9][0-9]{0,15})";
/// A strictly positive amount: a non-zero whole part, or a zero one with a
/// non-zero fraction of at most three decimals.
const POSITIVE: &str = r"([1-9][0-9]{0,15}(\.[0-9]{1,3})?|0\.(00[1-9]|0[1-9][0-9]?|[1-9][0-9]{0,2}))";

fn amount_pattern(sign: &str, body: &str) -> String {
    format!("^{sign}{body}$")
}

const AMOUNT_RULES: &str = "A decimal string, never a JSON number, so no client parses money into a float. \
At most as many decimals as the currency's minor unit has (2 for EUR and USD, 0 for JPY, 3 for KWD) \
and at most 10^15 minor units; an amount beyond either is a 422 naming the field.";

/// A signed decimal amount such as `-42.50`; negative is money out.
pub struct Amount;

impl PartialSchema for Amount {
    fn schema() -> RefOr<Schema> {
        string_schema(amount_pattern("-?", &format!(r"{WHOLE}(\.[0-9]{{1,3}})?")), AMOUNT_RULES, "-42.50")
    }
}

impl ToSchema for Amount {}

/// A decimal amount greater than zero, such as `400.00`.
pub struct PositiveAmount;

impl PartialSchema for PositiveAmount {
    fn schema() -> RefOr<Schema> {
        string_schema(amount_pattern("", POSITIVE), &format!("Greater than zero. {AMOUNT_RULES}"), "400.00")
    }
}

impl ToSchema for PositiveAmount {}

/// A signed decimal amount other than zero, such as `250.00` or `-20.00`.
pub struct NonZeroAmount;

impl PartialSchema for NonZeroAmount {
    fn schema() -> RefOr<Schema> {
        string_schema(amount_pattern("-?", POSITIVE), &format!("Not zero. {AMOUNT_RULES}"), "250.00")
    }
}

impl ToSchema for NonZeroAmount {}

/// A decimal amount of zero or more, such as `1.50` (a fee).
pub struct NonNegativeAmount;

impl PartialSchema for NonNegativeAmount {
    fn schema() -> RefOr<Schema> {
        string_schema(
            amount_pattern("", &format!(r"{WHOLE}(\.[0-9]{{1,3}})?")),
            &format!("Zero or more. {AMOUNT_RULES}"),
            "1.50",
        )
    }
}

impl ToSchema for NonNegativeAmount {}

fn string_schema(pattern: String, description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([example])
        .into()
}

/// One of the ISO 4217 codes the platform accepts ([`Currency::all`]).
pub struct CurrencyCode;

impl PartialSchema for CurrencyCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Currency::all().map(Currency::code)))
            .description(Some("An ISO 4217 currency code the platform supports, in capitals."))
            .examples(["EUR"])
            .into()
    }
}

impl ToSchema for CurrencyCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_currency_schema_lists_every_accepted_code() {
        let RefOr::T(Schema::Object(object)) = CurrencyCode::schema() else { panic!("a string schema") };
        let codes = object.enum_values.expect("an enum");
        assert!(codes.iter().any(|c| c == "JPY"));
        assert_eq!(codes.len(), Currency::all().count());
        for code in &codes {
            assert!(Currency::from_code(code.as_str().unwrap()).is_some(), "{code} is refused by the server");
        }
    }
}
