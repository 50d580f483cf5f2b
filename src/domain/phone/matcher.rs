//! The `phonenumber` crate's verdict on a plainly written number, reached
//! without its shared regex cache.
//!
//! The crate keeps every metadata pattern as a string and, on each use, looks
//! it up in one cache of compiled expressions behind one global mutex (hashing
//! the pattern text each time, and recompiling whatever the cache of 100 has
//! evicted). Validating a number takes a dozen such uses, so the lock, not the
//! matching, bounded an import, and more threads could not help.
//!
//! Here each region's patterns, read from the same crate's metadata (through
//! [`super::snapshot`], which spares the crate's own costly load), are
//! compiled once, on the region's first number, into expressions of the `regex`
//! crate (the one the library itself compiles them with, with its options
//! but for Unicode classes: see `builder`), and the library's steps from text to verdict are followed one by
//! one: its quirks are kept on purpose, since the point is the same verdict and
//! the same E.164 string for every input, not a better one. A descriptor, for
//! one, matches when its pattern matches a *prefix* of the number (the library
//! asks for a match that starts at 0, not one that spans the number), and a
//! default region's national prefix is stripped even from a `+`number of
//! another country.
//!
//! Only text of digits, spaces, `-`, `.`, `(`, `)` and one leading `+` is
//! decided here; anything else (letters, extensions, `tel:` URIs, other
//! scripts' digits) returns `None`, and the caller asks the library, whose
//! grammar for those is much larger. The comparison test below checks both
//! paths against the library.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{LazyLock, OnceLock};

use phonenumber::country::Id;
use regex::{Regex, RegexBuilder};

use super::snapshot::{self, Descriptor, Region};

/// What the library would answer for a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Parsed and valid: the number in E.164 form.
    Valid(String),
    /// Parsed, but `is_valid` says no.
    Invalid,
    /// `parse` fails.
    Unparseable,
}

/// Where a step leaves the number: refused, or handed back to the library.
enum Stop {
    Unparseable,
    /// A branch where the library would panic or where its data holds
    /// something this module does not model; it alone decides.
    Library,
}

impl From<std::num::ParseIntError> for Stop {
    fn from(_: std::num::ParseIntError) -> Self {
        Stop::Unparseable
    }
}

/// Loads this module's tables now rather than at the first number.
pub(crate) fn load() {
    tables();
}

/// The verdict for `raw` (already trimmed) with `region` for national numbers,
/// or `None` when the text is not one this module decides.
pub(crate) fn verdict(raw: &str, region: Option<Id>) -> Option<Verdict> {
    if !is_plain(raw) {
        return None;
    }
    let tables = tables();
    let default = match region {
        Some(id) => Some(tables.by_id.get(id.as_ref()).copied()?),
        None => None,
    };
    match decide(tables, raw, default) {
        Ok(verdict) => Some(verdict),
        Err(Stop::Unparseable) => Some(Verdict::Unparseable),
        Err(Stop::Library) => None,
    }
}

/// Digits, the separators people write, and one `+` in front: the text whose
/// path through the library's grammar is short enough to follow here.
fn is_plain(raw: &str) -> bool {
    !raw.is_empty()
        && raw
            .bytes()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || matches!(c, b' ' | b'-' | b'.' | b'(' | b')') || (c == b'+' && i == 0))
}

/// How the country code was found (the library's `country::Source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Plus,
    Idd,
    Number,
    Default,
}

#[derive(Debug, Clone)]
struct Number {
    source: Source,
    national: String,
    prefix: Option<String>,
}

fn decide(t: &Tables, raw: &str, default: Option<usize>) -> Result<Verdict, Stop> {
    let (national, prefix) = split(raw).ok_or(Stop::Unparseable)?;
    if !is_viable(national) {
        return Err(Stop::Unparseable);
    }
    let mut number = country_code(t, default, national, prefix)?;

    // The metadata that classifies a national prefix: the default region's
    // whenever one is given, whatever country code the number carries.
    let meta = match default {
        Some(region) => Some(region),
        None => {
            let code = parse_code(number.prefix.as_deref())?;
            source_for(t, code, number.national.trim_start_matches('0'))?.map(|(region, _)| region)
        }
    };
    if let Some(region) = meta {
        let entry = &t.entries[region];
        let mut potential = national_number(entry, number.clone())?;
        if let Some(prefix) = entry.meta.national_prefix.as_deref()
            && potential.national.starts_with(prefix)
        {
            potential.national.replace_range(..prefix.len(), "");
        }
        if length(&entry.meta.general, potential.national.len()) != Length::TooShort {
            number = potential;
        }
    }

    if number.national.len() < MIN_LENGTH_FOR_NSN {
        return Err(Stop::Unparseable);
    }
    if number.national.len() > MAX_LENGTH_FOR_NSN {
        return Err(Stop::Unparseable);
    }
    let code = parse_code(number.prefix.as_deref())?;
    // The library keeps the national number as its leading zeros and an
    // integer below 2^56, and validates and prints that form.
    let zeros = number.national.bytes().take_while(|&b| b == b'0').count();
    let value: u64 = number.national[zeros..].parse()?;
    if value >= 1 << 56 {
        return Err(Stop::Unparseable);
    }
    // The national part is digits alone (`digits_of`, less prefixes, and
    // the metadata's transform rules, which are digits and `$n`), so its
    // value printed after its leading zeros is the text itself (a `format!`
    // of the two cost about 700 instructions a number under callgrind).
    let national = number.national;
    debug_assert_eq!(national, format!("{}{value}", "0".repeat(zeros)));

    let valid = match source_for(t, code, &national)? {
        Some((_, Some(known))) => known,
        Some((region, None)) => t.entries[region].compiled().is_valid(&national),
        None => false,
    };
    if !valid {
        return Ok(Verdict::Invalid);
    }
    let mut e164 = String::with_capacity(national.len() + 6);
    e164.push('+');
    // Writing into a `String` cannot fail.
    let _ = write!(e164, "{code}");
    e164.push_str(&national);
    Ok(Verdict::Valid(e164))
}

const MIN_LENGTH_FOR_NSN: usize = 2;
const MAX_LENGTH_FOR_NSN: usize = 17;
const MAX_LENGTH_FOR_COUNTRY_CODE: usize = 3;

/// `prefix` as a country code, as the library reads it (none reads as 0).
fn parse_code(prefix: Option<&str>) -> Result<u16, Stop> {
    Ok(prefix.map(str::parse).unwrap_or(Ok(0))?)
}

/// The library's first cut: an RFC 3966 reading (`+44-20-…`, no spaces) when it
/// applies, else the "natural" one. Returns the national part (still with its
/// separators) and the country code the RFC 3966 reading found, if any.
fn split(raw: &str) -> Option<(&str, Option<&str>)> {
    let separator = |c: u8| matches!(c, b'-' | b'.' | b'(' | b')');
    if !raw.contains(' ') {
        match raw.strip_prefix('+') {
            // `+` and the code up to the first separator, then the number.
            Some(after) => {
                if let Some(end) = after.bytes().position(separator)
                    && end > 0
                {
                    return Some((&after[end..], Some(&after[..end])));
                }
            }
            None => return Some((raw, None)),
        }
    }
    // From the first `+` or digit, without the trailing run of what is neither
    // letter nor digit. No extension can match in plain text.
    let start = raw.find(|c: char| c == '+' || c.is_ascii_digit())?;
    let national = raw[start..].trim_end_matches([' ', '-', '.', '(', ')', '+']);
    (!national.is_empty()).then_some((national, None))
}

/// The library's `is_viable` on plain text: exactly two digits, or at least
/// three digits after any leading `+`.
fn is_viable(national: &str) -> bool {
    let digits = national.bytes().filter(u8::is_ascii_digit).count();
    national.len() >= MIN_LENGTH_FOR_NSN && ((national.len() == 2 && digits == 2) || digits >= 3)
}

/// Digits only: what the library's normalising leaves of plain text.
fn digits_of(text: &str) -> String {
    // Sized once: collected a char at a time, the string grew as it went.
    let mut digits = String::with_capacity(text.len());
    digits.extend(text.bytes().filter(u8::is_ascii_digit).map(char::from));
    digits
}

/// The library's `country_code` with its `international_prefix` step.
fn country_code(t: &Tables, default: Option<usize>, national: &str, prefix: Option<&str>) -> Result<Number, Stop> {
    let idd = default.and_then(|region| t.entries[region].compiled().idd.as_ref());
    let mut number = match prefix {
        Some(prefix) => Number { source: Source::Plus, national: digits_of(national), prefix: Some(digits_of(prefix)) },
        None => {
            let plus = national.starts_with('+');
            let mut number = Number {
                source: if plus { Source::Plus } else { Source::Default },
                national: digits_of(national),
                prefix: None,
            };
            let found = idd.and_then(|re| re.find(&number.national)).map(|m| (m.start(), m.end()));
            // An international prefix at the start goes, unless a 0 follows
            // it (the library returns early for a `+` number without one,
            // which comes to the same).
            if let Some((0, end)) = found
                && !number.national[end..].starts_with('0')
            {
                if number.source != Source::Plus {
                    number.source = Source::Idd;
                }
                number.national.replace_range(..end, "");
            }
            number
        }
    };
    match number.source {
        Source::Plus | Source::Idd | Source::Number => {
            if number.national.len() <= MIN_LENGTH_FOR_NSN {
                return Err(Stop::Unparseable);
            }
            if let Some(prefix) = &number.prefix {
                let code: u16 = prefix.parse()?;
                return if t.by_code.contains_key(&code) { Ok(number) } else { Err(Stop::Unparseable) };
            }
            if number.national.starts_with('0') {
                return Err(Stop::Unparseable);
            }
            for len in 1..=MAX_LENGTH_FOR_COUNTRY_CODE {
                let code: u16 = number.national[..len].parse()?;
                if t.by_code.contains_key(&code) {
                    number.national.replace_range(..len, "");
                    number.prefix = Some(code.to_string());
                    return Ok(number);
                }
            }
            Err(Stop::Unparseable)
        }
        Source::Default => {
            let Some(region) = default else {
                return Err(Stop::Unparseable);
            };
            let entry = &t.entries[region];
            let code = entry.meta.code.to_string();
            if number.national.starts_with(&code)
                && (!entry.compiled().general.is_match(&number.national)
                    || !length(&entry.meta.general, number.national.len()).is_possible())
            {
                number.source = Source::Number;
                number.national.replace_range(..code.len(), "");
            }
            number.prefix = Some(code);
            Ok(number)
        }
    }
}

/// The library's `national_number`: strips a national prefix (and carrier
/// code) by the region's pattern, or rewrites the number by its transform rule.
fn national_number(entry: &Entry, mut number: Number) -> Result<Number, Stop> {
    let compiled = entry.compiled();
    let Some(parsing) = &compiled.national_parsing else {
        if let Some(prefix) = entry.meta.national_prefix.as_deref()
            && number.national.starts_with(prefix)
        {
            number.national.replace_range(..prefix.len(), "");
        }
        return Ok(number);
    };
    let Some(found) = parsing.find(&number.national) else {
        return Ok(number);
    };
    if found.start() != 0 {
        return Ok(number);
    }
    let end = found.end();
    let captures = parsing.captures(&number.national).ok_or(Stop::Library)?;
    let first = captures.get(1).is_some();
    let last = captures.get(captures.len() - 1).is_some();
    match entry.meta.national_prefix_transform_rule.as_deref() {
        // The library checks the whole number again here where it means the
        // rest after the prefix; both checks give the same answer, so the
        // prefix always goes.
        Some(_) if !last => number.national.replace_range(..end, ""),
        None => number.national.replace_range(..end, ""),
        Some(transform) => {
            let viable = compiled.general.is_match(&number.national);
            let transformed = parsing.replace(&number.national, transform).into_owned();
            if viable && !compiled.general.is_match(&transformed) {
                return Ok(number);
            }
            // The library takes the first group as the carrier and panics
            // without one.
            if !first {
                return Err(Stop::Library);
            }
            number.national = transformed;
        }
    }
    Ok(number)
}

/// The library's `validator::length` for the general descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Possible,
    LocalOnly,
    TooShort,
    Invalid,
    TooLong,
}

impl Length {
    fn is_possible(self) -> bool {
        matches!(self, Length::Possible | Length::LocalOnly)
    }
}

fn length(general: &Descriptor, len: usize) -> Length {
    let len = len as u16;
    let possible = &general.lengths;
    let Some((&minimum, &maximum)) = possible.first().zip(possible.last()) else {
        return Length::Invalid;
    };
    if general.local_lengths.contains(&len) {
        Length::LocalOnly
    } else if len == minimum {
        Length::Possible
    } else if len < minimum {
        Length::TooShort
    } else if len > maximum {
        Length::TooLong
    } else if possible.contains(&len) {
        Length::Possible
    } else {
        Length::Invalid
    }
}

/// The library's `source_for`: the region whose metadata decides a number with
/// country code `code`. With it, when the choice already ran the region's
/// type patterns, whether one matched (the validity the caller wants next).
fn source_for(t: &Tables, code: u16, national: &str) -> Result<Option<(usize, Option<bool>)>, Stop> {
    let Some(regions) = t.by_code.get(&code) else {
        return Ok(None);
    };
    if let [only] = regions[..] {
        let entry = &t.entries[only];
        return Ok(if entry.meta.id == "001" {
            // The library goes through the country code to the same entry.
            Some((t.first_for_code[&code], None))
        } else if entry.id_parses {
            Some((only, None))
        } else {
            None
        });
    }
    for &region in regions {
        let entry = &t.entries[region];
        // The library unwraps the region's id here.
        if !entry.id_parses {
            return Err(Stop::Library);
        }
        let compiled = entry.compiled();
        if let Some(leading) = &compiled.leading_digits {
            if leading.is_match(national) {
                return Ok(Some((region, None)));
            }
        } else if compiled.is_valid(national) {
            return Ok(Some((region, Some(true))));
        }
    }
    Ok(None)
}

/// The regions, indexed by id and by country code, in the library's order;
/// each region's patterns compiled on first use.
struct Tables {
    entries: Vec<Entry>,
    by_id: HashMap<String, usize>,
    /// A country code's regions, its main region first (`Database::region`).
    by_code: HashMap<u16, Vec<usize>>,
    /// A country code's first metadata (`Database::by_code(..)[0]`).
    first_for_code: HashMap<u16, usize>,
}

struct Entry {
    meta: Region,
    /// Whether the library can read the region's id as a `country::Id`.
    id_parses: bool,
    compiled: OnceLock<Compiled>,
}

impl Entry {
    fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| Compiled::new(&self.meta))
    }
}

fn tables() -> &'static Tables {
    static TABLES: LazyLock<Tables> = LazyLock::new(|| {
        let s = snapshot::load();
        let entries = s
            .entries
            .into_iter()
            .map(|meta| Entry { id_parses: Id::from_str(&meta.id).is_ok(), meta, compiled: OnceLock::new() })
            .collect();
        Tables {
            entries,
            by_id: s.by_id.into_iter().collect(),
            by_code: s.by_code.into_iter().collect(),
            first_for_code: s.first_for_code.into_iter().collect(),
        }
    });
    &TABLES
}

/// One region's patterns as compiled expressions.
struct Compiled {
    general: Pattern,
    /// The descriptors of which one must match for `is_valid`: premium rate,
    /// toll free, shared cost, VoIP, personal, pager, UAN, voicemail, fixed
    /// line, mobile (the library's `number_type` before `Unknown`).
    types: Vec<Pattern>,
    /// International dialling prefix, searched like the library does.
    idd: Option<Regex>,
    /// National prefix (and carrier code) for parsing, searched like the
    /// library does, groups and all.
    national_parsing: Option<Regex>,
    /// Anchored at the start, for regions sharing a country code.
    leading_digits: Option<Regex>,
}

impl Compiled {
    fn new(meta: &Region) -> Self {
        Compiled {
            general: Pattern::new(&meta.general),
            types: meta.types.iter().map(Pattern::new).collect(),
            idd: meta.international_prefix.as_deref().map(compile),
            national_parsing: meta.national_prefix_for_parsing.as_deref().map(compile),
            leading_digits: meta.leading_digits.as_deref().map(anchored),
        }
    }

    /// `number_type(..) != Unknown`: the general pattern and one type's.
    fn is_valid(&self, national: &str) -> bool {
        self.general.is_match(national) && self.types.iter().any(|p| p.is_match(national))
    }
}

/// A descriptor: its possible lengths (none listed: any) and its pattern.
struct Pattern {
    lengths: Vec<u16>,
    regex: Regex,
}

impl Pattern {
    fn new(descriptor: &Descriptor) -> Self {
        Pattern { lengths: descriptor.lengths.clone(), regex: anchored(&descriptor.pattern) }
    }

    fn is_match(&self, national: &str) -> bool {
        (self.lengths.is_empty() || self.lengths.contains(&(national.len() as u16))) && self.regex.is_match(national)
    }
}

/// The library's options for its metadata patterns (free spacing; the
/// `regex-cache` defaults for the rest), but for Unicode: every text these
/// patterns are run on here is ASCII digits (see `digits_of`), where `\d`
/// and `[0-9]` match alike, and the patterns hold nothing but digits,
/// classes, groups and counts. With Unicode on, each `\d` is the class of
/// every script's digits, and a region's patterns compiled to automata
/// many times larger: most of an import's first second.
fn builder(pattern: &str) -> RegexBuilder {
    let mut b = RegexBuilder::new(pattern);
    b.ignore_whitespace(true).unicode(false).size_limit(10 * (1 << 20)).dfa_size_limit(2 * (1 << 20));
    b
}

fn compile(pattern: &str) -> Regex {
    builder(pattern).build().expect("the library compiles the same pattern")
}

/// `pattern` matching only at the start: the library's "a match that starts
/// at 0" exists exactly when this matches. The newline ends any free-spacing
/// comment before the closing parenthesis.
fn anchored(pattern: &str) -> Regex {
    builder(&format!("^(?:{pattern}\n)")).build().expect("the library compiles the same pattern")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::phone::library_verdict;
    use phonenumber::metadata::{DATABASE, Descriptor, Metadata};

    /// Regions whose numbers the comparison writes: large plans, regions that
    /// share a country code (+1, +44, +7, +47, +590, +61), and prefixes that
    /// rewrite numbers (AR, MX, BR).
    const REGIONS: [&str; 32] = [
        "US", "CA", "AG", "PR", "JM", "GB", "JE", "IM", "DE", "FR", "IT", "ES", "NL", "CH", "AT", "SE", "NO", "SJ",
        "PL", "IE", "AU", "CX", "NZ", "JP", "IN", "BR", "MX", "AR", "ZA", "RU", "KZ", "GP",
    ];
    const PER_REGION: usize = 3_200;
    const SEED: u64 = 0x5EED_F10C_2026;

    /// SplitMix64: a seeded stream that is the same on every machine.
    struct Stream(u64);

    impl Stream {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn digits(&mut self, n: usize) -> String {
            (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// A national significant number for `meta`: an example number, changed
    /// or not, its first digits with random ones after, or random digits.
    fn national(rng: &mut Stream, meta: &Metadata, examples: &[&str]) -> String {
        let example = (*rng.pick(examples)).to_string();
        match rng.below(100) {
            0..35 => example,
            35..55 => {
                let keep = example.len().saturating_sub(1 + rng.below(4));
                format!("{}{}", &example[..keep], rng.digits(example.len() - keep))
            }
            55..65 => {
                if rng.chance(50) {
                    format!("{example}{}", rng.digits(1))
                } else {
                    example[..example.len() - 1].to_string()
                }
            }
            65..85 => {
                let keep = 1 + rng.below(3.min(example.len()));
                format!("{}{}", &example[..keep], rng.digits(example.len().saturating_sub(keep)))
            }
            _ => {
                let lengths = meta.descriptors().general().possible_length();
                let n = if lengths.is_empty() || rng.chance(40) {
                    2 + rng.below(15)
                } else {
                    usize::from(*rng.pick(lengths))
                };
                rng.digits(n)
            }
        }
    }

    /// `digits` broken up as people write them.
    fn written(rng: &mut Stream, digits: &str) -> String {
        let style = rng.below(6);
        if style == 0 || digits.len() < 4 {
            return digits.to_string();
        }
        let separator = [" ", "-", ".", " ", "-"][style - 1];
        let mut out = String::new();
        let mut rest = digits;
        let first = 2 + rng.below(3).min(rest.len() - 2);
        if rng.chance(20) {
            out.push('(');
            out.push_str(&rest[..first]);
            out.push(')');
            out.push_str(if rng.chance(50) { " " } else { "" });
        } else {
            out.push_str(&rest[..first]);
            out.push_str(separator);
        }
        rest = &rest[first..];
        while !rest.is_empty() {
            let n = (2 + rng.below(3)).min(rest.len());
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            if !rest.is_empty() {
                out.push_str(separator);
            }
        }
        out
    }

    /// One number as a CSV might hold it, with the region to parse it in.
    fn case(rng: &mut Stream, region: &str) -> (String, Option<Id>) {
        let meta = DATABASE.by_id(region).expect("a region of the list");
        let d = meta.descriptors();
        let examples: Vec<&str> = [d.fixed_line(), d.mobile(), d.toll_free(), d.premium_rate(), d.voip(), d.uan()]
            .into_iter()
            .flatten()
            .filter_map(Descriptor::example)
            .collect();
        let nsn = national(rng, meta, &examples);
        let code = meta.country_code();
        let digits = match rng.below(100) {
            // National form, with the national prefix mostly.
            0..40 => match meta.national_prefix() {
                Some(prefix) if rng.chance(75) => format!("{prefix}{nsn}"),
                _ => nsn,
            },
            // Country code without the `+`.
            40..47 => format!("{code}{nsn}"),
            // International dialling prefixes.
            47..55 => format!("{}{code}{nsn}", rng.pick(&["00", "011", "810", "0011"])),
            _ => nsn,
        };
        let plus = !digits.starts_with('0') && rng.below(100) >= 40 || rng.chance(3);
        let text = if plus {
            // Mostly `+` and the country code before the national number.
            let body = if digits.len() > 3 && rng.chance(85) { format!("{code}{digits}") } else { digits };
            let written = written(rng, &body);
            if rng.chance(15) {
                format!("+{code}-{}", written.trim_start_matches(&code.to_string()))
            } else {
                format!("+{written}")
            }
        } else {
            written(rng, &digits)
        };
        let default = match rng.below(100) {
            0..80 => region,
            80..90 => rng.pick(&REGIONS),
            _ => return (text, None),
        };
        (text, Id::from_str(default).ok())
    }

    #[test]
    fn verdicts_match_the_library_on_generated_numbers() {
        println!("seed {SEED:#x}, {PER_REGION} numbers in each of {} regions", REGIONS.len());
        let mut rng = Stream(SEED);
        let mut differences = Vec::new();
        let mut handed_back = 0;
        for region in REGIONS {
            let (mut valid, mut invalid, mut unparseable) = (0, 0, 0);
            for _ in 0..PER_REGION {
                let (text, default) = case(&mut rng, region);
                let expected = library_verdict(&text, default);
                if let Verdict::Valid(e164) = &expected
                    && valid % 16 == 0
                {
                    // The shortcut to E.164 above writes what the formatter does.
                    let number = phonenumber::parse(default, &text).expect("parsed once already");
                    assert_eq!(&number.format().mode(phonenumber::Mode::E164).to_string(), e164);
                }
                match verdict(&text, default) {
                    Some(got) if got == expected => {}
                    Some(got) => differences.push(format!("{text:?} in {default:?}: {got:?}, library {expected:?}")),
                    None => handed_back += 1,
                }
                match expected {
                    Verdict::Valid(_) => valid += 1,
                    Verdict::Invalid => invalid += 1,
                    Verdict::Unparseable => unparseable += 1,
                }
            }
            println!("{region}: {valid} valid, {invalid} invalid, {unparseable} unparseable");
            assert!(valid > 0 && invalid > 0, "{region}: {valid} valid and {invalid} invalid; both must occur");
        }
        assert_eq!(handed_back, 0, "plain text is decided here, never handed back");
        assert!(
            differences.is_empty(),
            "{} differences, the first: {:#?}",
            differences.len(),
            &differences[..differences.len().min(20)]
        );
    }

    #[test]
    fn every_entrys_patterns_compile() {
        for entry in &tables().entries {
            let compiled = entry.compiled();
            assert_eq!(compiled.types.len(), entry.meta.types.len(), "{}", entry.meta.id);
        }
        assert!(tables().entries.len() > 200);
    }

    #[test]
    fn edge_cases_get_the_librarys_verdict() {
        let cases = [
            "00",
            "0",
            "+",
            "++44",
            "(",
            "()",
            "+0",
            "+1",
            "1-",
            "12",
            "123",
            "+12",
            "+44-20-7946-0958",
            "+4420-7946-0958",
            "+44(20)79460958",
            "+44 (0) 20 7946 0958",
            "+800 1234 5678",
            "+979 123456789",
            "+882 1234 5678",
            "+870 773 111 632",
            "0044 20 7946 0958",
            "011 44 20 7946 0958",
            "+011 44 20 7946 0958",
            "+00 44 20 7946 0958",
            "44 20 7946 0958",
            "1 (201) 555-0123",
            "+1 201 555 0123 ",
            "201.555.0123.",
            "0000",
            "+10000000000",
            "+999 123 456",
            "00000000000000000000",
            "12345678901234567890",
            "+7 701 123 4567",
            "8 (701) 123-45-67",
            "+54 9 11 1234 5678",
            "011 15 1234 5678",
            "+52 1 55 1234 5678",
            "+55 11 91234 5678",
            "0 21 11 91234 5678",
        ];
        let regions = [None, Some(Id::US), Some(Id::GB), Some(Id::AR), Some(Id::MX), Some(Id::BR), Some(Id::KZ)];
        for text in cases {
            for region in regions {
                if let Some(got) = verdict(text, region) {
                    assert_eq!(got, library_verdict(text, region), "{text:?} in {region:?}");
                }
            }
        }
    }

    #[test]
    fn text_beyond_digits_and_separators_is_left_to_the_library() {
        for text in ["tel:+1-201-555-0123", "+1 201 555 0123 ext. 4", "0800-FLOWERS", "+44 20 7946 0958#", "+１ 201"] {
            assert_eq!(verdict(text, Some(Id::US)), None, "{text:?}");
        }
        assert_eq!(verdict("+1 201 555 0123", Some(Id::US)), Some(Verdict::Valid("+12015550123".into())));
    }
}
