//! Label and field selectors, as `labelSelector=` and `fieldSelector=`
//! spell them: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
//! `a notin (x)`; fields by their dotted path (`metadata.name=x`,
//! `involvedObject.uid=...`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector; the empty one matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Selector(requirements))
    }

    /// Whether the labels of `object` satisfy every requirement.
    pub fn matches_labels(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        self.matches_with(|key| labels.and_then(|labels| labels.get(key)).and_then(Value::as_str).map(str::to_owned))
    }

    /// Whether the fields of `object` (dotted paths) satisfy every
    /// requirement; numbers and booleans compare as their text.
    pub fn matches_fields(&self, object: &Value) -> bool {
        self.matches_with(|path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            match object.pointer(&pointer) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Null) | None => Some(String::new()),
                Some(other) => Some(other.to_string()),
            }
        })
    }

    fn matches_with(&self, value_of: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => value_of(key).as_deref() == Some(value),
            Requirement::NotEquals(key, value) => value_of(key).as_deref() != Some(value),
            Requirement::Exists(key) => value_of(key).is_some(),
            Requirement::NotExists(key) => value_of(key).is_none(),
            Requirement::In(key, values) => value_of(key).is_some_and(|v| values.contains(&v)),
            Requirement::NotIn(key, values) => value_of(key).is_none_or(|v| !values.contains(&v)),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned()));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key.trim().to_owned(), value.trim().to_owned()));
    }
    for (word, notin) in [(" notin ", true), (" in ", false)] {
        if let Some((key, values)) = part.split_once(word) {
            let values = values.trim();
            let inner = values
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| format!("unable to parse requirement: {part:?}: expected a list in parentheses"))?;
            let values = inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
            let key = key.trim().to_owned();
            return Ok(if notin { Requirement::NotIn(key, values) } else { Requirement::In(key, values) });
        }
    }
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(key.trim().to_owned()));
    }
    if part.contains(char::is_whitespace) {
        return Err(format!("unable to parse requirement: {part:?}"));
    }
    Ok(Requirement::Exists(part.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors_match_as_kubectl_means_them() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "auth", "tier": "web"}}});
        let matches = |s: &str| Selector::parse(s).unwrap().matches_labels(&pod);
        assert!(matches(""));
        assert!(matches("app=auth"));
        assert!(matches("app==auth,tier"));
        assert!(matches("app in (auth,budget),!missing"));
        assert!(!matches("app!=auth"));
        assert!(!matches("app notin (auth)"));
        assert!(!matches("app=auth,tier=db"));
    }

    #[test]
    fn field_selectors_name_dotted_paths() {
        let event = json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Pod", "name": "p"}});
        let matches = |s: &str| Selector::parse(s).unwrap().matches_fields(&event);
        assert!(matches("metadata.name=e"));
        assert!(matches("involvedObject.kind=Pod,involvedObject.name=p"));
        assert!(!matches("involvedObject.name!=p"));
    }
}
