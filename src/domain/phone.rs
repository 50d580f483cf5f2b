//! E.164 phone numbers, normalised with the `phonenumber` crate (Google's
//! libphonenumber metadata) and checked with `is_valid`, not just parsed.
//!
//! Plainly written numbers (digits, spaces, `-`, `.`, parentheses, a leading
//! `+`) get the library's verdict from [`matcher`], which follows the library's
//! steps over its metadata compiled once per region, without the library's
//! one lock around every pattern; the rest go to the library itself.

mod matcher;
mod snapshot;

use std::fmt;
use std::str::FromStr;

use phonenumber::country::Id;

use matcher::Verdict;

/// A valid phone number in E.164 form (`+15017122661`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Phone(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("{0:?} is not a phone number")]
    Unparseable(String),
    #[error("{0:?} is not a valid phone number for its country")]
    Invalid(String),
    #[error("{0:?} has no +country code and the campaign sets no default_region")]
    NoRegion(String),
}

impl Phone {
    /// What a purged job's phone starts with: a keyed hash follows, not a number.
    pub const HASH_PREFIX: &str = "hash:";

    /// Loads the numbering metadata every parse needs, once per process. A
    /// command that reads the ledger before it parses any number can load it
    /// on another thread meanwhile.
    pub fn load_metadata() {
        matcher::load();
    }

    /// Parses `raw` as written in a CSV: with a `+country` prefix, or national
    /// format in `default_region`.
    pub fn parse(raw: &str, default_region: Option<Id>) -> Result<Self, PhoneError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(PhoneError::Empty);
        }
        if !raw.starts_with('+') && !raw.starts_with("00") && default_region.is_none() {
            return Err(PhoneError::NoRegion(raw.to_string()));
        }
        match matcher::verdict(raw, default_region).unwrap_or_else(|| library_verdict(raw, default_region)) {
            Verdict::Valid(e164) => Ok(Phone(e164)),
            Verdict::Invalid => Err(PhoneError::Invalid(raw.to_string())),
            Verdict::Unparseable => Err(PhoneError::Unparseable(raw.to_string())),
        }
    }

    /// Wraps an already-normalised E.164 string read back from the ledger. A
    /// purged run's job holds a keyed hash instead (`hash:…`, see
    /// [`is_hashed`](Self::is_hashed)), which passes through unchanged.
    pub fn from_e164(e164: String) -> Self {
        Phone(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is a purged job's keyed hash rather than a number.
    pub fn is_hashed(&self) -> bool {
        self.0.starts_with(Self::HASH_PREFIX)
    }

    /// The number with all but the last two digits hidden, for logs. A keyed
    /// hash shows as itself, cut short: it is no number, and hides none.
    pub fn masked(&self) -> String {
        if self.is_hashed() {
            return self.0.chars().take(13).chain(['…']).collect();
        }
        let n = self.0.len();
        let keep = 2.min(n);
        format!("+{}{}", "*".repeat(n.saturating_sub(keep + 1)), &self.0[n - keep..])
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `text` with every E.164-looking number (`+` and 7 to 15 digits) masked as
/// [`Phone::masked`] does, for log lines that carry text from elsewhere (a
/// Studio error message may quote the number it refused).
pub fn mask_phones_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('+') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if (7..=15).contains(&digits) {
            out.push_str(&Phone(format!("+{}", &after[..digits])).masked());
        } else {
            out.push('+');
            out.push_str(&after[..digits]);
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// The `phonenumber` crate's own verdict: `parse`, then `is_valid`.
fn library_verdict(raw: &str, default_region: Option<Id>) -> Verdict {
    let Ok(number) = phonenumber::parse(default_region, raw) else {
        return Verdict::Unparseable;
    };
    if !phonenumber::is_valid(&number) {
        return Verdict::Invalid;
    }
    // What the crate's formatter writes in E.164 mode (`Mode::E164`), without
    // the search through the region's national formats (every one of their
    // patterns through the shared cache) that it makes first and E.164 ignores.
    Verdict::Valid(format!("+{}{}", number.code().value(), number.national()))
}

/// Parses a two-letter region code such as `US` or `de`.
pub fn parse_region(code: &str) -> Option<Id> {
    Id::from_str(&code.trim().to_ascii_uppercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_numbers_take_the_default_region() {
        let us = parse_region("US");
        assert_eq!(Phone::parse("(201) 555-0123", us).unwrap().as_str(), "+12015550123");
        assert_eq!(Phone::parse("+44 20 7946 0958", us).unwrap().as_str(), "+442079460958");
    }

    #[test]
    fn numbers_that_parse_but_are_not_valid_are_refused() {
        let us = parse_region("US");
        assert!(matches!(Phone::parse("+1 555 555", us), Err(PhoneError::Invalid(_) | PhoneError::Unparseable(_))));
        assert!(matches!(Phone::parse("hello", us), Err(PhoneError::Unparseable(_) | PhoneError::Invalid(_))));
        assert_eq!(Phone::parse("  ", us), Err(PhoneError::Empty));
        assert!(matches!(Phone::parse("2015550123", None), Err(PhoneError::NoRegion(_))));
    }

    #[test]
    fn masking_keeps_only_the_last_two_digits() {
        let p = Phone::from_e164("+12015550123".into());
        assert_eq!(p.masked(), "+*********23");
    }

    #[test]
    fn a_purged_jobs_keyed_hash_is_masked_as_a_short_hash_not_as_a_number() {
        let p = Phone::from_e164("hash:0123456789abcdef0123456789abcdef".into());
        assert!(p.is_hashed());
        assert_eq!(p.masked(), "hash:01234567…");
        assert!(!Phone::from_e164("+12015550123".into()).is_hashed());
    }

    #[test]
    fn numbers_inside_other_text_are_masked_too() {
        let text = "Twilio error 21211: The 'To' number +15005550001 is not valid; 1+1 = +2";
        assert_eq!(mask_phones_in(text), "Twilio error 21211: The 'To' number +*********01 is not valid; 1+1 = +2");
    }
}
