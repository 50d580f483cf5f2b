//! The record layer under the contacts reader: RFC 4180 fields and records,
//! each with the line it starts on.
//!
//! A general CSV parser is not used here because the reader needs three things
//! from this layer that such a parser does not report: a quote still open at the
//! end of the input (rather than one last field holding the rest of the file),
//! line numbers that count CRLF, LF and a lone CR as one line ending each, inside
//! quoted fields too, and memory bounded by the field and column limits however
//! the file is built.
//!
//! The dialect is the one spreadsheets write: comma-separated; a field starting
//! with `"` is quoted, may hold commas and line endings, and writes a quote as
//! `""`; a quote anywhere else is an ordinary character; text after a closing
//! quote is kept (`"ab"cd` is `abcd`); empty lines are skipped; a UTF-8
//! byte-order mark at the very start is dropped.

use std::io::{self, BufRead};

/// The longest field, in bytes, that a row may have.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;

const BOM: &[u8] = b"\xef\xbb\xbf";

/// One record: the bytes of its fields as far as they are kept, how many fields
/// it had and the line it starts on.
#[derive(Debug, Default)]
pub struct Record {
    bytes: Vec<u8>,
    /// Where each kept field ends in `bytes`.
    ends: Vec<usize>,
    /// Fields in the record, kept or not.
    count: usize,
    /// The first field longer than [`MAX_FIELD_BYTES`]: its index and length.
    oversized: Option<(usize, usize)>,
    line: u64,
}

impl Record {
    /// The line the record starts on (the first line is 1).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// How many fields the record had, including any not kept.
    pub fn len(&self) -> usize {
        self.count
    }

    /// The first field longer than [`MAX_FIELD_BYTES`], as (index, length in
    /// bytes). Only its first [`MAX_FIELD_BYTES`] bytes are kept.
    pub fn oversized(&self) -> Option<(usize, usize)> {
        self.oversized
    }

    /// Field `i`, if it was kept.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    /// The kept fields, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).filter_map(|i| self.get(i))
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.count = 0;
        self.oversized = None;
        self.line = 0;
    }
}

#[derive(Debug)]
pub enum RecordError {
    Io(io::Error),
    /// The input ended inside a quoted field that opened on `line`.
    UnclosedQuote {
        line: u64,
    },
}

#[derive(Clone, Copy)]
enum State {
    /// Before a record's first byte: line endings here are empty lines.
    RecordStart,
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: either the first of `""` or the end of
    /// the quoting.
    QuoteInQuoted,
}

/// Reads records one at a time from a buffered input.
pub struct Records<R> {
    input: R,
    /// The line of the next byte (the first line is 1).
    line: u64,
    /// The last byte was a CR, so a LF right after it ends the same line.
    after_cr: bool,
    started: bool,
}

impl<R: BufRead> Records<R> {
    pub fn new(input: R) -> Self {
        Records { input, line: 1, after_cr: false, started: false }
    }

    /// Reads the next record into `record`, keeping at most `max_fields` of its
    /// fields (the rest are counted). `false` at the end of the input.
    pub fn read(&mut self, record: &mut Record, max_fields: usize) -> Result<bool, RecordError> {
        record.clear();
        if !self.started {
            self.started = true;
            let has_bom = loop {
                match self.input.fill_buf() {
                    Ok(head) => break head.starts_with(BOM),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(RecordError::Io(e)),
                }
            };
            if has_bom {
                self.input.consume(BOM.len());
            }
        }
        let mut state = State::RecordStart;
        let mut field_len = 0usize;
        let mut quote_line = 0u64;
        loop {
            let buf = match self.input.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RecordError::Io(e)),
            };
            if buf.is_empty() {
                return match state {
                    State::RecordStart => Ok(false),
                    State::Quoted => Err(RecordError::UnclosedQuote { line: quote_line }),
                    _ => {
                        end_field(record, &mut field_len, max_fields);
                        Ok(true)
                    }
                };
            }
            let mut used = 0;
            let mut ended = false;
            while used < buf.len() {
                // A run of bytes that cannot end the field or a line is copied at
                // once: the common case, and much cheaper than a byte at a time.
                let rest = &buf[used..];
                let run = match state {
                    State::Unquoted => rest.iter().position(|b| matches!(b, b',' | b'\r' | b'\n')),
                    State::Quoted => rest.iter().position(|b| matches!(b, b'"' | b'\r' | b'\n')),
                    _ => Some(0),
                }
                .unwrap_or(rest.len());
                if run > 0 {
                    push_run(record, &rest[..run], &mut field_len, max_fields);
                    self.after_cr = false;
                    used += run;
                    continue;
                }
                let b = buf[used];
                used += 1;
                let at = self.line;
                match b {
                    b'\n' if self.after_cr => self.after_cr = false,
                    b'\n' => self.line += 1,
                    b'\r' => {
                        self.line += 1;
                        self.after_cr = true;
                    }
                    _ => self.after_cr = false,
                }
                let ends_line = b == b'\n' || b == b'\r';
                if let State::RecordStart = state {
                    if ends_line {
                        continue;
                    }
                    record.line = at;
                    state = State::FieldStart;
                }
                state = match state {
                    State::FieldStart if b == b'"' => {
                        quote_line = at;
                        State::Quoted
                    }
                    State::Quoted if b == b'"' => State::QuoteInQuoted,
                    State::Quoted => {
                        push_run(record, &[b], &mut field_len, max_fields);
                        State::Quoted
                    }
                    State::QuoteInQuoted if b == b'"' => {
                        push_run(record, &[b], &mut field_len, max_fields);
                        State::Quoted
                    }
                    _ if b == b',' => {
                        end_field(record, &mut field_len, max_fields);
                        State::FieldStart
                    }
                    _ if ends_line => {
                        end_field(record, &mut field_len, max_fields);
                        ended = true;
                        break;
                    }
                    _ => {
                        push_run(record, &[b], &mut field_len, max_fields);
                        State::Unquoted
                    }
                };
            }
            self.input.consume(used);
            if ended {
                return Ok(true);
            }
        }
    }
}

/// Adds bytes to the current field; past [`MAX_FIELD_BYTES`] they are only
/// counted.
fn push_run(record: &mut Record, bytes: &[u8], field_len: &mut usize, max_fields: usize) {
    if record.count < max_fields {
        let room = MAX_FIELD_BYTES.saturating_sub(*field_len);
        record.bytes.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
    *field_len += bytes.len();
}

fn end_field(record: &mut Record, field_len: &mut usize, max_fields: usize) {
    if *field_len > MAX_FIELD_BYTES && record.oversized.is_none() {
        record.oversized = Some((record.count, *field_len));
    }
    if record.count < max_fields {
        record.ends.push(record.bytes.len());
    }
    record.count += 1;
    *field_len = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record of `text` as (line, fields), or the error.
    fn read_all(text: &[u8], max_fields: usize) -> Result<Vec<(u64, Vec<String>)>, RecordError> {
        let mut records = Records::new(io::BufReader::with_capacity(4, text));
        let mut record = Record::default();
        let mut out = Vec::new();
        while records.read(&mut record, max_fields)? {
            out.push((record.line(), record.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()));
        }
        Ok(out)
    }

    fn fields(text: &[u8]) -> Vec<Vec<String>> {
        read_all(text, usize::MAX).unwrap().into_iter().map(|(_, f)| f).collect()
    }

    #[test]
    fn quotes_are_read_as_spreadsheets_write_them() {
        assert_eq!(fields(b"\"ab\"cd,e\n"), [["abcd", "e"]]);
        assert_eq!(fields(b"a\"b,c\n"), [["a\"b", "c"]]);
        assert_eq!(fields(b" \"a\",b\n"), [[" \"a\"", "b"]]);
        assert_eq!(fields(b"\"a\"\"b\",\"\"\n"), [["a\"b", ""]]);
        assert_eq!(fields(b"a,,\n"), [["a", "", ""]]);
    }

    #[test]
    fn empty_lines_are_skipped_and_lines_count_every_kind_of_line_ending() {
        let records = read_all(b"h\r\n\r\nx\ry\n\n\"p\r\nq\"\r\nlast", usize::MAX).unwrap();
        let lines: Vec<u64> = records.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [1, 3, 4, 6, 8]);
        assert_eq!(records[3].1, ["p\r\nq"]);
    }

    #[test]
    fn a_byte_order_mark_is_dropped_only_at_the_start() {
        assert_eq!(fields(b"\xef\xbb\xbfh\nx\xef\xbb\xbf\n"), [vec!["h".to_string()], vec!["x\u{feff}".to_string()]]);
    }

    #[test]
    fn fields_past_the_kept_number_are_counted_but_not_kept() {
        let mut records = Records::new(&b"a,b,c,d\n"[..]);
        let mut record = Record::default();
        assert!(records.read(&mut record, 2).unwrap());
        assert_eq!(record.len(), 4);
        assert_eq!(record.iter().collect::<Vec<_>>(), [b"a", b"b"]);
    }

    #[test]
    fn an_oversized_field_is_measured_but_kept_only_up_to_the_limit() {
        let text = format!("a,\"{}\",b\n", "x".repeat(MAX_FIELD_BYTES + 10));
        let mut records = Records::new(text.as_bytes());
        let mut record = Record::default();
        assert!(records.read(&mut record, usize::MAX).unwrap());
        assert_eq!(record.oversized(), Some((1, MAX_FIELD_BYTES + 10)));
        assert_eq!(record.get(1).map(<[u8]>::len), Some(MAX_FIELD_BYTES));
        assert_eq!(record.get(2), Some(&b"b"[..]));
    }

    #[test]
    fn a_quote_open_at_the_end_is_an_error_naming_its_line() {
        let err = read_all(b"h\nx\n\"y\nz\n", usize::MAX).unwrap_err();
        assert!(matches!(err, RecordError::UnclosedQuote { line: 3 }), "{err:?}");
        // A quote closed just before the end is fine.
        assert_eq!(fields(b"\"y\nz\""), [["y\nz"]]);
    }

    #[test]
    fn every_closed_input_splits_into_the_same_fields_as_the_csv_crate_did() {
        // The csv crate read contacts before this layer replaced it; on any input
        // whose quotes all close, the fields must be the same. Short random
        // strings over the characters that matter cover the corner cases.
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4180);
        let alphabet = b"a ,\"\r\n";
        let mut compared = 0;
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let text: Vec<u8> = (0..len).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect();
            let Ok(ours) = read_all(&text, usize::MAX) else { continue };
            let ours: Vec<Vec<String>> = ours.into_iter().map(|(_, f)| f).collect();
            let theirs: Vec<Vec<String>> = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(text.as_slice())
                .byte_records()
                .map(|r| r.unwrap().iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect())
                .collect();
            assert_eq!(ours, theirs, "input {:?}", String::from_utf8_lossy(&text));
            compared += 1;
        }
        assert!(compared > 10_000, "only {compared} inputs had every quote closed");
    }
}
