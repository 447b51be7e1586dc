//! Reading JSON values into settings: the section reader that matches keys case-insensitively, the type checks
//! that turn a wrong type into an error naming the setting (or the double-encoding hint when a string holds
//! the JSON that was expected), and how values are quoted back in messages.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::SettingsError;
use super::error::SettingsErrorKind;
use super::raw::RawSection;

/// Longest value quoted back in an error message, in characters.
pub(super) const MAX_SHOWN: usize = 200;

/// Keeps the keys of `object` that name fields of `T` (matched case-insensitively, renamed to the canonical
/// spelling), warns about the others, and deserializes the raw struct.
pub(super) fn section<T: RawSection>(
    object: &Map<String, Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<T, SettingsError> {
    let mut kept = Map::new();
    let mut spelled: HashMap<&'static str, &str> = HashMap::new();
    for (key, value) in object {
        match T::KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) {
            Some(&canonical) => {
                if let Some(first) = spelled.insert(canonical, key) {
                    return Err(SettingsErrorKind::DuplicateKey {
                        first: first.to_string(),
                        second: key.clone(),
                    }
                    .at(join(path, canonical)));
                }
                kept.insert(canonical.to_string(), value.clone());
            }
            None => warnings.push(format!(
                "{} is not a KeyVaultForLinux setting and is ignored",
                join(path, key)
            )),
        }
    }
    // Every field is an Option<Value>, so this cannot fail; report it as a type error rather than panic.
    serde_json::from_value(Value::Object(kept)).map_err(|e| {
        SettingsErrorKind::WrongType {
            expected: "an object",
            found: e.to_string(),
        }
        .at(path)
    })
}

/// `path.key`, or `key` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The object at `path`, or the error saying it must be `expected`.
pub(super) fn expect_object<'a>(
    value: &'a Value,
    path: &str,
    expected: &'static str,
) -> Result<&'a Map<String, Value>, SettingsError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(not_a(other, path, expected, false)),
    }
}

/// The list at `path`, or the error saying it must be `expected`.
pub(super) fn expect_array<'a>(
    value: &'a Value,
    path: &str,
    expected: &'static str,
) -> Result<&'a Vec<Value>, SettingsError> {
    match value {
        Value::Array(list) => Ok(list),
        other => Err(not_a(other, path, expected, true)),
    }
}

/// The error for a value of the wrong type: the double-encoding message when it is a string holding the JSON
/// that was expected, a type error otherwise.
pub(super) fn not_a(
    value: &Value,
    path: &str,
    expected: &'static str,
    list: bool,
) -> SettingsError {
    if let Value::String(s) = value
        && let Some(preview) = escaped_json(s, list)
    {
        return SettingsErrorKind::EscapedJson { preview }.at(path);
    }
    SettingsErrorKind::WrongType {
        expected,
        found: found(value),
    }
    .at(path)
}

/// If `text` is itself a JSON object (or, when `list_too`, a list), its JSON-quoted start for the message.
pub(super) fn escaped_json(text: &str, list_too: bool) -> Option<String> {
    let inner: Value = serde_json::from_str(text).ok()?;
    if !(inner.is_object() || (list_too && inner.is_array())) {
        return None;
    }
    let quoted = serde_json::to_string(text).unwrap_or_default();
    Some(truncate(&quoted, 40))
}

/// An optional string setting: absent/null → None, a string → Some, anything else → WrongType.
pub(super) fn string<'a>(
    value: Option<&'a Value>,
    path: &str,
    expected: &'static str,
) -> Result<Option<&'a str>, SettingsError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(not_a(other, path, expected, false)),
    }
}

/// A bool, or the strings "true"/"false" in any case (waagent and PowerShell write booleans as strings).
pub(super) fn boolean(
    value: Option<&Value>,
    path: &str,
    default: bool,
) -> Result<bool, SettingsError> {
    match value {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(SettingsErrorKind::NotBoolean {
            value: json_text(other),
        }
        .at(path)),
    }
}

/// A whole number in 1..=max, given as a JSON number (3600 or 3600.0) or a string of digits ("3600").
pub(super) fn whole_number(value: &Value, max: u64) -> Option<u64> {
    let n = match value {
        Value::Number(n) => match n.as_u64() {
            Some(u) => u,
            None => {
                let f = n.as_f64()?;
                if f.fract() != 0.0 || f < 1.0 || f > max as f64 {
                    return None;
                }
                f as u64
            }
        },
        Value::String(s) => {
            let digits = s.trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()?
        }
        _ => return None,
    };
    (1..=max).contains(&n).then_some(n)
}

/// Whether a number setting is zero (0, 0.0 or "0").
pub(super) fn is_zero(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.trim() == "0",
        _ => false,
    }
}

/// What a value is, for "found …" in messages.
pub(super) fn found(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => format!("the string {}", json_text(value)),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// A value as JSON text, shortened for messages.
pub(super) fn json_text(value: &Value) -> String {
    truncate(&serde_json::to_string(value).unwrap_or_default(), MAX_SHOWN)
}

/// A user string, shortened for messages (status files are read by people and capped by waagent).
pub(super) fn shown(text: &str) -> String {
    truncate(text, MAX_SHOWN)
}

/// `text` cut to `max_chars` characters, with "…" when something was cut.
pub(super) fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::sections::MAX_POLLING_SECONDS;
    use serde_json::json;

    #[test]
    fn whole_numbers() {
        let max = MAX_POLLING_SECONDS;
        assert_eq!(whole_number(&json!(3600), max), Some(3600));
        assert_eq!(whole_number(&json!("3600"), max), Some(3600));
        assert_eq!(whole_number(&json!(" 60 "), max), Some(60));
        assert_eq!(whole_number(&json!(60.0), max), Some(60));
        for bad in [
            json!(0),
            json!("0"),
            json!(-5),
            json!("-5"),
            json!("+5"),
            json!(1.5),
            json!("3600s"),
            json!("abc"),
            json!(""),
            json!(null),
            json!(true),
            json!([1]),
            json!(4_294_967_296u64),
            json!(1e300),
        ] {
            assert_eq!(whole_number(&bad, max), None, "{bad}");
        }
        assert_eq!(
            whole_number(&json!(4_294_967_295u64), max),
            Some(4_294_967_295)
        );
    }

    #[test]
    fn long_values_are_shortened() {
        let long = "x".repeat(500);
        assert_eq!(shown(&long).chars().count(), MAX_SHOWN + 1);
        assert!(shown(&long).ends_with('…'));
        assert_eq!(shown("short"), "short");
    }
}
