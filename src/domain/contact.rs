//! What an import hands the ledger: one job per contact with its Parameters
//! rendered and its times computed, or a row refused with its line and reason.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Phone;
use super::text::text_enum;

/// An Execution's Parameters as the ledger keeps them, without flowcast's own
/// `flowcast` key (which needs the job id, known only once the job is stored).
///
/// Rendered at import as two JSON arrays, the keys and the values in the same
/// order: every job of a run usually has the same keys (the campaign's
/// `[parameters]` table or the CSV's header), so the ledger can store the
/// keys once, on the run, and each job's values alone. A job whose keys are
/// not its run's, and every job written before that, keeps a JSON object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameters(Form);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// Keys and values, each a JSON array, in the same order.
    Split { keys: Arc<str>, values: String },
    /// A JSON object's text.
    Object(String),
}

/// Parameters text that is not a JSON object, or values that do not match
/// their run's keys (only a damaged ledger has either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameters in the ledger: neither a JSON object nor values for its run's keys")]
pub struct NotAnObject;

impl Parameters {
    pub fn from_map(map: &Map<String, Value>) -> Self {
        // Strings and JSON values always serialise.
        let mut keys = Vec::with_capacity(2 + map.keys().map(|k| k.len() + 3).sum::<usize>());
        let mut values = Vec::with_capacity(2 + map.len() * 16);
        keys.push(b'[');
        values.push(b'[');
        for (i, (key, value)) in map.iter().enumerate() {
            if i > 0 {
                keys.push(b',');
                values.push(b',');
            }
            write_json(&mut keys, key);
            write_json(&mut values, value);
        }
        keys.push(b']');
        values.push(b']');
        // serde_json writes UTF-8.
        let text = |bytes| String::from_utf8(bytes).expect("JSON text is UTF-8");
        Parameters(Form::Split { keys: text(keys).into(), values: text(values) })
    }

    /// Wraps the text the ledger stored: a JSON object, or a values array
    /// whose keys are `run_keys` (the run's, as [`keys`](Self::keys) wrote
    /// them). A values array with no keys is kept as text that is not an
    /// object.
    pub fn from_ledger(text: String, run_keys: Option<&Arc<str>>) -> Self {
        match run_keys {
            Some(keys) if text.starts_with('[') => Parameters(Form::Split { keys: keys.clone(), values: text }),
            _ => Parameters(Form::Object(text)),
        }
    }

    /// The keys, a JSON array, when the Parameters are held apart from their
    /// values (as rendered at import).
    pub fn keys(&self) -> Option<&str> {
        match &self.0 {
            Form::Split { keys, .. } => Some(keys),
            Form::Object(_) => None,
        }
    }

    /// The values, a JSON array in the order of [`keys`](Self::keys).
    pub fn values(&self) -> Option<&str> {
        match &self.0 {
            Form::Split { values, .. } => Some(values),
            Form::Object(_) => None,
        }
    }

    /// The Parameters as a JSON object's text.
    pub fn to_object(&self) -> Result<Cow<'_, str>, NotAnObject> {
        match &self.0 {
            Form::Object(text) => Ok(Cow::Borrowed(text)),
            Form::Split { keys, values } => {
                let mut out = String::with_capacity(keys.len() + values.len());
                out.push('{');
                write_pairs(&mut out, keys, values)?;
                out.push('}');
                Ok(Cow::Owned(out))
            }
        }
    }

    /// The Parameters with flowcast's own key added last, so that any
    /// Execution flowcast made can be recognised later (reconciliation,
    /// reports). Written straight into the text rather than through a parsed
    /// object: this runs once per create.
    pub fn with_flowcast_key(&self, campaign: &str, run: i64, job: i64) -> Result<String, NotAnObject> {
        let mut out = String::with_capacity(self.len_hint() + campaign.len() + 64);
        out.push('{');
        let any = match &self.0 {
            Form::Object(text) => {
                let body = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or(NotAnObject)?;
                out.push_str(body);
                !body.trim().is_empty()
            }
            Form::Split { keys, values } => write_pairs(&mut out, keys, values)?,
        };
        if any {
            out.push(',');
        }
        // The key as `json!` writes it (keys in order, the name escaped),
        // straight into the text (through a `format!` of a JSON value, the
        // whole call took 4,100 instructions under callgrind; 3,300 this way).
        out.push_str("\"flowcast\":{\"campaign\":");
        out.push_str(&serde_json::to_string(campaign).expect("a string serialises"));
        // Writing into a `String` cannot fail.
        let _ = write!(out, ",\"job\":{job},\"run\":{run}}}}}");
        Ok(out)
    }

    /// About how long the Parameters are as text.
    fn len_hint(&self) -> usize {
        match &self.0 {
            Form::Object(text) => text.len(),
            Form::Split { keys, values } => keys.len() + values.len(),
        }
    }
}

/// `value` as JSON, appended to `out`.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Serialising a string or a JSON value into memory cannot fail.
    serde_json::to_writer(out, value).expect("a JSON value serialises");
}

/// Appends `"key":value` for each pair of the two arrays, comma-separated;
/// true when there was at least one. Arrays of different lengths, or keys
/// that are not strings, are a damaged ledger's.
fn write_pairs(out: &mut String, keys: &str, values: &str) -> Result<bool, NotAnObject> {
    let keys: Vec<&RawValue> = serde_json::from_str(keys).map_err(|_| NotAnObject)?;
    let values: Vec<&RawValue> = serde_json::from_str(values).map_err(|_| NotAnObject)?;
    if keys.len() != values.len() || keys.iter().any(|k| !k.get().starts_with('"')) {
        return Err(NotAnObject);
    }
    for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key.get());
        out.push(':');
        out.push_str(value.get());
    }
    Ok(!keys.is_empty())
}

/// What the ledger stores for one contact of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The CSV line where the contact's row starts (the header is line 1).
    pub line: u64,
    pub phone: Phone,
    pub zone: Tz,
    pub parameters: Parameters,
    /// When to send: `send_at` (or the run's start), moved into the send window.
    pub due_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The campaign's dedupe key for this contact (`None`: the campaign does
    /// not dedupe).
    pub dedupe_key: Option<String>,
}

/// A row the import refused, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    /// The phone as written, when the row had one (for the report).
    pub raw_phone: String,
    pub reason: String,
}

text_enum! {
    /// What became of a CSV row that did not become a job.
    pub enum RowOutcome("row outcome") {
        /// Refused, with its line and reason.
        Rejected = "rejected",
        /// A phone seen earlier in the file; the first row wins.
        Duplicate = "duplicate",
    }
}

/// One CSV row, as the ledger records it.
#[derive(Debug, Clone)]
pub enum ImportRow {
    Job(JobSpec),
    Rejected(Rejection),
}

impl ImportRow {
    pub fn line(&self) -> u64 {
        match self {
            ImportRow::Job(spec) => spec.line,
            ImportRow::Rejected(r) => r.line,
        }
    }

    /// The phone text the row is known by: a job's number, or what a refused
    /// row held in its phone column (for a row refused after its number was
    /// read, that number: the same text as had it become a job).
    pub fn phone_text(&self) -> &str {
        match self {
            ImportRow::Job(spec) => spec.phone.as_str(),
            ImportRow::Rejected(r) => &r.raw_phone,
        }
    }

    /// Which of the `parts` parts of an import the row is written with (see
    /// [`part_of`]).
    pub fn part(&self, parts: usize) -> usize {
        part_of(self.phone_text(), parts)
    }
}

/// Which of the `parts` parts of an import a row with phone text `phone` is
/// written with, when parts are written side by side (each by its own
/// transaction, each part's rows in file order). Every row with one number
/// falls in one part, so the first row of a phone is still the one kept.
/// FNV-1a (with a finaliser) rather than std's hasher, which is seeded
/// afresh in each process: the same file splits the same way wherever it
/// is imported. (Resuming does not rely on it: see [`ResumePoint`].)
pub fn part_of(phone: &str, parts: usize) -> usize {
    if parts <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in phone.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV-1a mixes its last bytes into few bits (its low bit is only the
    // parity of the bytes' low bits, and numbers that differ in their last
    // digits share their high bits): splitmix64's finaliser spreads them.
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % parts as u64) as usize
}

/// Where an interrupted import resumes: every CSV line through `through` is
/// in the ledger, and so are the lines in `held` after it (those a part
/// written side by side committed while another did not; see [`part_of`]).
/// The lines held are read from the ledger rather than worked out again
/// from the rows' parts: a campaign file changed in between (another
/// default region, so a number once refused now reads as a job) must not
/// move a row from one part to the other and so lose it or count it twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePoint {
    through: u64,
    held: std::collections::BTreeSet<u64>,
}

impl ResumePoint {
    /// Every line through `line` is in, and none after it.
    pub fn whole(line: u64) -> Self {
        ResumePoint { through: line, held: Default::default() }
    }

    /// Every line through `through` is in, and the lines `held` after it.
    pub fn with_held(through: u64, held: impl IntoIterator<Item = u64>) -> Self {
        ResumePoint { through, held: held.into_iter().filter(|&line| line > through).collect() }
    }

    /// The last line every row through which is in.
    pub fn first(&self) -> u64 {
        self.through
    }

    /// Whether the row at `line` is already in the ledger.
    pub fn has(&self, line: u64) -> bool {
        line <= self.through || self.held.contains(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("name".into(), Value::String("Ada \"A\"".into()));
        map.insert("floor".into(), serde_json::json!(3));
        map.insert("a \"quoted\" key\n".into(), serde_json::json!([1, {"b": null}]));
        map
    }

    #[test]
    fn flowcasts_key_is_added_to_the_parameters_as_json() {
        let map = sample();
        let with_key = Parameters::from_map(&map).with_flowcast_key("c", 2, 9).unwrap();
        let value: Value = serde_json::from_str(&with_key).unwrap();
        let mut expected = map.clone();
        expected.insert("flowcast".into(), serde_json::json!({"campaign": "c", "run": 2, "job": 9}));
        assert_eq!(value, Value::Object(expected));
        // Byte for byte what `json!` writes, the key last, an awkward name too,
        // from the form rendered at import and from an object in the ledger.
        let name = "a \"quoted\" name\n";
        let key = serde_json::json!({ "campaign": name, "run": 2, "job": 9 });
        let body = serde_json::to_string(&map).unwrap();
        let want = format!("{},\"flowcast\":{key}}}", &body[..body.len() - 1]);
        assert_eq!(Parameters::from_map(&map).with_flowcast_key(name, 2, 9).unwrap(), want);
        assert_eq!(Parameters::from_ledger(body.clone(), None).with_flowcast_key(name, 2, 9).unwrap(), want);
        for empty in [Parameters::from_map(&Map::new()), Parameters::from_ledger("{}".into(), None)] {
            let with_key = empty.with_flowcast_key("c", 1, 1).unwrap();
            assert_eq!(with_key, "{\"flowcast\":{\"campaign\":\"c\",\"job\":1,\"run\":1}}");
        }
    }

    #[test]
    fn parameters_split_at_import_come_back_whole_from_their_runs_keys() {
        let map = sample();
        let rendered = Parameters::from_map(&map);
        assert_eq!(rendered.to_object().unwrap(), serde_json::to_string(&map).unwrap());
        let keys: Arc<str> = rendered.keys().unwrap().into();
        assert_eq!(serde_json::from_str::<Vec<String>>(&keys).unwrap(), map.keys().cloned().collect::<Vec<_>>());
        // What the ledger stored for a job of that run: its values alone.
        let stored = Parameters::from_ledger(rendered.values().unwrap().to_string(), Some(&keys));
        assert_eq!(stored, rendered);
        assert_eq!(stored.with_flowcast_key("c", 1, 2), rendered.with_flowcast_key("c", 1, 2));
        // A job written as an object is read as one, whatever its run's keys.
        let object = Parameters::from_ledger("{\"x\":1}".into(), Some(&keys));
        assert_eq!(object.keys(), None);
        assert_eq!(object.to_object().unwrap(), "{\"x\":1}");
    }

    #[test]
    fn damaged_parameters_are_not_an_object() {
        let keys: Arc<str> = "[\"a\",\"b\"]".into();
        let damaged = [
            Parameters::from_ledger("[1]".into(), None),
            Parameters::from_ledger("[1]".into(), Some(&keys)),
            Parameters::from_ledger("[1,2,3]".into(), Some(&keys)),
            Parameters::from_ledger("[1,2".into(), Some(&keys)),
            Parameters::from_ledger("[1,2]".into(), Some(&"[1,\"b\"]".into())),
            Parameters::from_ledger("\"text\"".into(), Some(&keys)),
        ];
        for parameters in damaged {
            assert_eq!(parameters.with_flowcast_key("c", 1, 1), Err(NotAnObject), "{parameters:?}");
        }
        assert_eq!(Parameters::from_ledger("[1,2]".into(), Some(&keys)).to_object().unwrap(), "{\"a\":1,\"b\":2}");
    }

    #[test]
    fn a_rows_part_follows_its_phone_text_alone_and_is_the_same_in_every_process() {
        // Fixed values: a part that changed between versions (or processes)
        // would make a resumed import read the wrong rows again.
        let parts: Vec<usize> = ["+14155550101", "+14155550102", "+14155550103", "+442071838750", "not a number", ""]
            .iter()
            .map(|p| part_of(p, 2))
            .collect();
        assert_eq!(parts, [0, 1, 0, 1, 0, 1]);
        assert!((0..100).all(|i| part_of(&format!("+1201555{i:04}"), 1) == 0));
        let ones = (0..1000).filter(|i| part_of(&format!("+1201555{i:04}"), 2) == 1).count();
        assert!((450..=550).contains(&ones), "{ones} of 1,000 in part 1");
        // Numbers that differ in their last digit alone, or by a prefix, are
        // spread too (FNV-1a alone kept both in one part).
        let moved =
            (0..1000).filter(|i| part_of(&format!("203555{i:04}"), 2) != part_of(&format!("+1203555{i:04}"), 2));
        assert!((400..=600).contains(&moved.count()));
        // A row refused after its number was read is in its number's part.
        let job = ImportRow::Job(JobSpec {
            line: 7,
            phone: Phone::from_e164("+14155550102".into()),
            zone: chrono_tz::UTC,
            parameters: Parameters::from_map(&Map::new()),
            due_at: None,
            expires_at: None,
            dedupe_key: None,
        });
        let refused = ImportRow::Rejected(Rejection { line: 7, raw_phone: "+14155550102".into(), reason: "x".into() });
        assert_eq!((job.part(2), refused.part(2)), (1, 1));
    }

    #[test]
    fn a_resumed_import_reads_again_only_the_lines_the_ledger_does_not_hold() {
        let resume = ResumePoint::with_held(10, [4, 12, 15]);
        assert_eq!(resume.first(), 10);
        assert!((1..=10).all(|line| resume.has(line)));
        assert!(resume.has(12) && resume.has(15));
        assert!(!resume.has(11) && !resume.has(13) && !resume.has(16));
        let whole = ResumePoint::whole(5);
        assert!(whole.has(5) && !whole.has(6));
    }
}
