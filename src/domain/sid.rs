//! Twilio SIDs: two letters and 32 hex digits.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a {kind} SID: expected {prefix} followed by 32 hex digits")]
pub struct SidError {
    value: String,
    kind: &'static str,
    prefix: &'static str,
}

fn is_sid(value: &str, prefix: &str) -> bool {
    value.len() == 34 && value.starts_with(prefix) && value[2..].chars().all(|c| c.is_ascii_hexdigit())
}

macro_rules! sid_type {
    ($name:ident, $prefix:literal, $kind:literal) => {
        #[doc = concat!("A ", $kind, " SID (`", $prefix, "` + 32 hex digits).")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, SidError> {
                if is_sid(value, $prefix) {
                    Ok(Self(value.to_string()))
                } else {
                    Err(SidError { value: value.to_string(), kind: $kind, prefix: $prefix })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

sid_type!(FlowSid, "FW", "Flow");
sid_type!(ExecutionSid, "FN", "Execution");

/// Finds the first Execution SID (`FN` + 32 hex) anywhere in a text, such as a 409
/// body whose shape Twilio does not document.
pub fn find_execution_sid(text: &str) -> Option<ExecutionSid> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + 34 <= bytes.len() {
        if bytes[i] == b'F' && bytes[i + 1] == b'N' {
            let candidate = &text[i..i + 34];
            let boundary_after = bytes.get(i + 34).is_none_or(|b| !b.is_ascii_hexdigit());
            let boundary_before = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
            if boundary_before && boundary_after && is_sid(candidate, "FN") {
                return Some(ExecutionSid(candidate.to_string()));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_sids_must_have_studio_shape() {
        assert!(FlowSid::parse("FW0123456789abcdef0123456789abcdef").is_ok());
        let err = FlowSid::parse("FW123").unwrap_err().to_string();
        assert!(err.contains("not a Flow SID"), "{err}");
        assert!(FlowSid::parse("FN0123456789abcdef0123456789abcdef").is_err());
        assert!(FlowSid::parse("FW0123456789abcdef0123456789abcdeg").is_err());
    }

    #[test]
    fn execution_sid_is_found_in_any_field_of_a_body() {
        let body = r#"{"code":20409,"message":"Execution FNaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa is active"}"#;
        assert_eq!(find_execution_sid(body).unwrap().as_str(), "FNaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert!(find_execution_sid(r#"{"code":20409}"#).is_none());
        // A longer hex run is not a SID.
        assert!(find_execution_sid("FNaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1").is_none());
    }
}
