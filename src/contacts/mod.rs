//! The one contacts CSV reader: RFC 4180, UTF-8 (a BOM is fine), header row
//! required, blank lines ignored, quoted commas and newlines kept.
//!
//! Reading streams one record at a time, so memory does not grow with the file.
//! Every data row comes out as a [`Row`]: a [`Contact`] with its phone normalised
//! to E.164, or a rejection with the line the row starts on and the reason. Lines
//! are counted as an editor counts them, whether they end in LF, CRLF or CR.
//! Duplicate detection is the caller's (the ledger's unique index, or a set in
//! dry runs), so that a million-row file does not need a million-entry set in
//! memory.
//!
//! What is refused, and why:
//! - a path that is not a regular file (a named pipe, a device, a folder), before
//!   it is opened: opening or reading one can wait forever;
//! - a header of more than [`MAX_COLUMNS`] columns, or with a name longer than
//!   [`MAX_FIELD_BYTES`]: no real contact list is that wide, and the limits keep
//!   the memory of a row bounded;
//! - a quote that is still open at the end of the file, as an error naming the
//!   line it opened on. Everything after that quote was read as quoted text, so
//!   no later line can be trusted to start a row; counting those rows as one
//!   field, or guessing where rows resume, would lose contacts without saying so.
//!
//! A data row with a field longer than [`MAX_FIELD_BYTES`] is rejected on its
//! own, with its line and the limit; the rows around it are read as usual.

mod json;
mod records;

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono_tz::Tz;
use phonenumber::country::Id;

pub use json::csv_from_json;
pub use records::MAX_FIELD_BYTES;
use records::{Record, RecordError, Records};

use crate::domain::{Phone, Rejection};

/// The column that may carry each contact's IANA time zone.
pub const TIMEZONE_COLUMN: &str = "timezone";

/// The widest header accepted.
pub const MAX_COLUMNS: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("{path}: is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: cannot open contacts file: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Header { path: PathBuf, line: u64, message: String },
    #[error(
        "{path}:{line}: a quote opened on this line is never closed; the file is refused, since no line after \
         it can be told apart from quoted text (close the quote, or write a quote inside a quoted field as \"\")"
    )]
    UnclosedQuote { path: PathBuf, line: u64 },
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "campaign {campaign:?} has trigger = \"api\": its contacts come over HTTP (POST /api/campaigns/{campaign}/contacts), not from a file"
    )]
    Pushed { campaign: String },
}

impl ContactsError {
    fn from_record(path: &Path, error: RecordError) -> Self {
        match error {
            RecordError::Io(e) => {
                ContactsError::Read { path: path.to_path_buf(), message: format!("cannot read: {e}") }
            }
            RecordError::UnclosedQuote { line } => ContactsError::UnclosedQuote { path: path.to_path_buf(), line },
        }
    }
}

/// How to read one campaign's CSV.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub phone_column: String,
    pub default_region: Option<Id>,
    pub timezone: Tz,
}

/// The header's column names, indexed once so that a lookup by name costs the
/// same however wide the header is.
#[derive(Debug)]
struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

/// A row that became a contact.
#[derive(Debug, Clone)]
pub struct Contact {
    /// The line where the row starts (the header is line 1).
    pub line: u64,
    pub phone: Phone,
    /// The contact's zone: its `timezone` column, else the campaign's.
    pub zone: Tz,
    columns: Arc<Columns>,
    values: Vec<String>,
}

impl Contact {
    /// The value of `column` in this row, if the file has that column.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.columns.index.get(column).and_then(|&i| self.values.get(i)).map(String::as_str)
    }

    /// Every (column, value) pair in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.columns.names.iter().map(String::as_str).zip(self.values.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone)]
pub enum Row {
    Contact(Contact),
    Rejected(Rejection),
}

/// Reads the header row only (for validation of templates against columns).
pub fn read_header(path: &Path) -> Result<Vec<String>, ContactsError> {
    let reader = ContactReader::open_raw(path)?;
    Ok(reader.columns.names.clone())
}

/// Streams the rows of a contacts CSV.
pub struct ContactReader {
    path: PathBuf,
    records: Records<Box<dyn BufRead + Send>>,
    columns: Arc<Columns>,
    phone_index: usize,
    zone_index: Option<usize>,
    options: Option<ReadOptions>,
    record: Record,
}

/// What a path is, in words, when it is not a regular file.
fn not_a_file(file_type: std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        return None;
    }
    if file_type.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a named pipe (FIFO)");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return Some("a device");
        }
    }
    Some("a special file")
}

impl ContactReader {
    pub fn open(path: &Path, options: ReadOptions) -> Result<Self, ContactsError> {
        let mut reader = Self::open_raw(path)?;
        reader.set_options(path, options)?;
        Ok(reader)
    }

    fn open_raw(path: &Path) -> Result<Self, ContactsError> {
        let open_err = |source| ContactsError::Open { path: path.to_path_buf(), source };
        let refuse = |kind| ContactsError::NotAFile { path: path.to_path_buf(), kind };
        // Opening a named pipe for reading waits for a writer, and a pipe or a
        // device may never reach its end: what the path is must be known before
        // it is opened. `metadata` follows symlinks, so a link to a regular file
        // is read as that file.
        let file_type = std::fs::metadata(path).map_err(open_err)?.file_type();
        if let Some(kind) = not_a_file(file_type) {
            return Err(refuse(kind));
        }
        let file = File::open(path).map_err(open_err)?;
        // The path may have been replaced since it was checked; what is read is
        // what was opened.
        if let Some(kind) = not_a_file(file.metadata().map_err(open_err)?.file_type()) {
            return Err(refuse(kind));
        }
        Self::from_input(path, Box::new(BufReader::with_capacity(64 * 1024, file)))
    }

    /// Reads contacts sent in a request's body (a CSV, with the same rules as
    /// a file); `name` stands for the file in messages.
    pub fn from_bytes(name: &Path, body: Vec<u8>, options: ReadOptions) -> Result<Self, ContactsError> {
        let mut reader = Self::from_input(name, Box::new(std::io::Cursor::new(body)))?;
        reader.set_options(name, options)?;
        Ok(reader)
    }

    fn set_options(&mut self, path: &Path, options: ReadOptions) -> Result<(), ContactsError> {
        self.phone_index = *self.columns.index.get(&options.phone_column).ok_or_else(|| ContactsError::Header {
            path: path.to_path_buf(),
            line: self.record.line(),
            message: format!(
                "no {:?} column for phone numbers (columns: {})",
                options.phone_column,
                self.columns.names.join(", ")
            ),
        })?;
        self.options = Some(options);
        Ok(())
    }

    fn from_input(path: &Path, input: Box<dyn BufRead + Send>) -> Result<Self, ContactsError> {
        let mut records = Records::new(input);
        let mut record = Record::default();
        let found = records.read(&mut record, MAX_COLUMNS).map_err(|e| ContactsError::from_record(path, e))?;
        let line = if found { record.line() } else { 1 };
        let header_err = |message: String| ContactsError::Header { path: path.to_path_buf(), line, message };
        if !found || (record.len() == 1 && record.get(0).is_some_and(<[u8]>::is_empty)) {
            return Err(header_err("the file is empty; a header row is required".into()));
        }
        if record.len() > MAX_COLUMNS {
            return Err(header_err(format!(
                "the header has {} columns, more than the limit of {MAX_COLUMNS}",
                record.len()
            )));
        }
        if let Some((i, len)) = record.oversized() {
            return Err(header_err(format!(
                "column {} has a name of {len} bytes, more than the limit of 64 KiB ({MAX_FIELD_BYTES} bytes)",
                i + 1
            )));
        }
        let mut names = Vec::with_capacity(record.len());
        let mut index = HashMap::with_capacity(record.len());
        for (i, field) in record.iter().enumerate() {
            let name = std::str::from_utf8(field)
                .map_err(|_| header_err("the header row is not UTF-8".into()))?
                .trim()
                .to_string();
            if name.is_empty() {
                return Err(header_err(format!("column {} has no name", i + 1)));
            }
            if index.insert(name.clone(), i).is_some() {
                return Err(header_err(format!("column {name:?} appears twice")));
            }
            names.push(name);
        }
        let zone_index = index.get(TIMEZONE_COLUMN).copied();
        Ok(ContactReader {
            path: path.to_path_buf(),
            records,
            columns: Arc::new(Columns { names, index }),
            phone_index: 0,
            zone_index,
            options: None,
            record,
        })
    }

    pub fn header(&self) -> &[String] {
        &self.columns.names
    }

    /// The next row, `None` at the end. An error that is not about one row (an
    /// I/O error, or a quote never closed) ends the import with an error naming
    /// the file, and the line where it can.
    pub fn next_row(&mut self) -> Result<Option<Row>, ContactsError> {
        match self.records.read(&mut self.record, self.columns.names.len()) {
            Ok(false) => Ok(None),
            Ok(true) => Ok(Some(self.classify())),
            Err(e) => Err(ContactsError::from_record(&self.path, e)),
        }
    }

    fn classify(&self) -> Row {
        let options = self.options.as_ref().expect("open() sets options before rows are read");
        let line = self.record.line();
        let reject = |raw_phone: String, reason: String| Row::Rejected(Rejection { line, raw_phone, reason });
        if let Some((i, len)) = self.record.oversized() {
            let field = match self.columns.names.get(i) {
                Some(name) => format!("column {name:?}"),
                None => format!("field {}", i + 1),
            };
            // The phone is only quoted back when it is whole.
            let raw_phone = match self.record.get(self.phone_index) {
                Some(phone) if i != self.phone_index => String::from_utf8_lossy(phone).into_owned(),
                _ => String::new(),
            };
            return reject(
                raw_phone,
                format!("{field} is {len} bytes long, more than the limit of 64 KiB ({MAX_FIELD_BYTES} bytes)"),
            );
        }
        let mut values = Vec::with_capacity(self.columns.names.len());
        for field in self.record.iter() {
            match std::str::from_utf8(field) {
                Ok(v) => values.push(v.to_string()),
                Err(_) => return reject(String::new(), "row is not valid UTF-8".into()),
            }
        }
        let raw_phone = values.get(self.phone_index).cloned().unwrap_or_default();
        if self.record.len() != self.columns.names.len() {
            return reject(
                raw_phone,
                format!("row has {} fields, the header has {}", self.record.len(), self.columns.names.len()),
            );
        }
        let phone = match Phone::parse(&raw_phone, options.default_region) {
            Ok(p) => p,
            Err(e) => return reject(raw_phone, format!("column {:?}: {e}", options.phone_column)),
        };
        let zone = match self.zone_index.map(|i| values[i].trim()) {
            Some(name) if !name.is_empty() => match Tz::from_str(name) {
                Ok(z) => z,
                Err(_) => {
                    return reject(raw_phone, format!("column \"timezone\": unknown time zone {name:?}"));
                }
            },
            _ => options.timezone,
        };
        Row::Contact(Contact { line, phone, zone, columns: Arc::clone(&self.columns), values })
    }
}

impl Iterator for ContactReader {
    type Item = Result<Row, ContactsError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_row().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_region;
    use std::io::Write;

    fn write_csv(text: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text).unwrap();
        f
    }

    fn options() -> ReadOptions {
        ReadOptions {
            phone_column: "phone".into(),
            default_region: parse_region("US"),
            timezone: chrono_tz::America::New_York,
        }
    }

    fn rows(text: &[u8]) -> Vec<Row> {
        let f = write_csv(text);
        ContactReader::open(f.path(), options()).unwrap().map(|r| r.unwrap()).collect()
    }

    #[test]
    fn bom_blank_lines_and_quoted_fields_are_read_as_rfc4180() {
        let rows =
            rows(b"\xef\xbb\xbfphone,name,note\n\n+12015550123,\"Doe, Jane\",\"two\nlines\"\n\n(201) 555-0124,Bob,x\n");
        assert_eq!(rows.len(), 2);
        let Row::Contact(first) = &rows[0] else { panic!("{rows:?}") };
        assert_eq!(first.phone.as_str(), "+12015550123");
        assert_eq!(first.get("name"), Some("Doe, Jane"));
        assert_eq!(first.get("note"), Some("two\nlines"));
        assert_eq!(first.line, 3);
        let Row::Contact(second) = &rows[1] else { panic!() };
        assert_eq!(second.phone.as_str(), "+12015550124");
        assert_eq!(second.line, 6);
    }

    #[test]
    fn the_last_row_without_a_newline_keeps_its_line_number_even_after_a_bom() {
        let rows = rows(b"\xef\xbb\xbfphone,name\n+12015550123,Ann\n\n+12015550124,Bob");
        let lines: Vec<u64> = rows
            .iter()
            .map(|r| match r {
                Row::Contact(c) => c.line,
                Row::Rejected(r) => r.line,
            })
            .collect();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn invalid_numbers_and_short_rows_are_rejected_with_their_line() {
        let rows = rows(b"phone,name\n+12015550123,Ann\nnot-a-number,Bob\n+12015550125\n");
        let rejected: Vec<_> = rows
            .iter()
            .filter_map(|r| match r {
                Row::Rejected(r) => Some((r.line, r.reason.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert_eq!(rejected[0].0, 3);
        assert!(
            rejected[0].1.contains("not a phone number") || rejected[0].1.contains("not a valid"),
            "{}",
            rejected[0].1
        );
        assert_eq!(rejected[1].0, 4);
        assert!(rejected[1].1.contains("1 fields, the header has 2"), "{}", rejected[1].1);
    }

    #[test]
    fn a_missing_phone_column_names_the_columns_found() {
        let f = write_csv(b"mobile,name\n+12015550123,Ann\n");
        let err = ContactReader::open(f.path(), options()).err().unwrap().to_string();
        assert!(err.contains(":1: no \"phone\" column"), "{err}");
        assert!(err.contains("mobile, name"), "{err}");
    }

    #[test]
    fn a_timezone_column_sets_each_contacts_zone() {
        let rows = rows(b"phone,timezone\n+12015550123,Europe/Berlin\n+12015550124,\n+12015550125,Mars/Base\n");
        let Row::Contact(a) = &rows[0] else { panic!() };
        assert_eq!(a.zone, chrono_tz::Europe::Berlin);
        let Row::Contact(b) = &rows[1] else { panic!() };
        assert_eq!(b.zone, chrono_tz::America::New_York);
        let Row::Rejected(c) = &rows[2] else { panic!() };
        assert!(c.reason.contains("unknown time zone"));
    }

    fn line_of(row: &Row) -> u64 {
        match row {
            Row::Contact(c) => c.line,
            Row::Rejected(r) => r.line,
        }
    }

    fn rejected_lines(rows: &[Row]) -> Vec<u64> {
        rows.iter().filter(|r| matches!(r, Row::Rejected(_))).map(line_of).collect()
    }

    #[test]
    fn an_unmatched_quote_is_refused_with_the_line_it_opened_on() {
        // 1,000 data rows; the quote on line 4 is never closed, so everything after
        // it would otherwise be folded into one field.
        let mut text = String::from("phone,name\n+12015550100,Ann\n+12015550101,Bob\n+12125550199,\"Ann\n");
        for i in 0..997 {
            text.push_str(&format!("+1201556{i:04},Row{i}\n"));
        }
        let f = write_csv(text.as_bytes());
        let mut reader = ContactReader::open(f.path(), options()).unwrap();
        let mut lines = Vec::new();
        let err = loop {
            match reader.next_row() {
                Ok(Some(row)) => lines.push(line_of(&row)),
                Ok(None) => panic!("the file was read to its end without an error; rows at lines {lines:?}"),
                Err(e) => break e.to_string(),
            }
        };
        assert_eq!(lines, [2, 3], "the rows before the quote are whole rows");
        assert!(err.starts_with(&format!("{}:4: ", f.path().display())), "{err}");
        assert!(err.contains("quote"), "{err}");
    }

    #[test]
    fn a_quote_closed_on_a_later_line_is_one_field_spanning_those_lines() {
        let rows = rows(b"phone,name\n+12015550100,\"Ann\nSmith, \"\"Jr\"\"\"\n+12015550101,Bob\n");
        let Row::Contact(first) = &rows[0] else { panic!("{rows:?}") };
        assert_eq!(first.get("name"), Some("Ann\nSmith, \"Jr\""));
        assert_eq!(rows.iter().map(line_of).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn crlf_rows_are_numbered_by_the_lines_they_start_on() {
        let rows =
            rows(b"phone,name\r\n+12015550100,Ann\r\nbad,Bob\r\n\r\n+12015550101\r\n+12015550102,Cy\r\nworse,Di\r\n");
        assert_eq!(rows.iter().map(line_of).collect::<Vec<_>>(), [2, 3, 5, 6, 7]);
        assert_eq!(rejected_lines(&rows), [3, 5, 7]);
    }

    #[test]
    fn crlf_with_a_bom_and_multi_line_quoted_fields_keeps_every_line_number() {
        // Line 2 opens a field that ends on line 4 (CRLF inside), line 6 one that
        // ends on line 7 (a bare LF inside), line 8 is blank and the last row has
        // no line ending.
        let rows = rows(
            b"\xef\xbb\xbfphone,note\r\n+12015550100,\"one\r\ntwo\r\nthree\"\r\nbad,x\r\n+12015550101,\"a\nb\"\r\n\r\nnope,y\r\n+12015550102,z",
        );
        assert_eq!(rows.iter().map(line_of).collect::<Vec<_>>(), [2, 5, 6, 9, 10]);
        assert_eq!(rejected_lines(&rows), [5, 9]);
        let Row::Contact(first) = &rows[0] else { panic!("{rows:?}") };
        assert_eq!(first.get("note"), Some("one\r\ntwo\r\nthree"));
    }

    #[test]
    fn lone_carriage_returns_end_lines_too() {
        let rows = rows(b"phone,name\r+12015550100,Ann\rbad,Bob\r+12015550101,Cy\r");
        assert_eq!(rows.iter().map(line_of).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(rejected_lines(&rows), [3]);
    }

    fn wide_csv(columns: usize) -> String {
        let names: Vec<String> = (1..columns).map(|i| format!("c{i}")).collect();
        let values: Vec<String> = (1..columns).map(|i| format!("v{i}")).collect();
        format!("phone,{}\n+12015550100,{}\n", names.join(","), values.join(","))
    }

    #[test]
    fn a_header_wider_than_the_limit_is_refused_with_the_limit() {
        let f = write_csv(wide_csv(1001).as_bytes());
        let err = ContactReader::open(f.path(), options()).err().expect("a 1,001-column header is refused").to_string();
        assert!(err.starts_with(&format!("{}:1: ", f.path().display())), "{err}");
        assert!(err.contains("1001 columns") && err.contains("1000"), "{err}");
        let err = read_header(f.path()).expect_err("read_header refuses it too").to_string();
        assert!(err.contains("1001 columns"), "{err}");
    }

    #[test]
    fn a_header_at_the_limit_is_read_and_every_column_is_found() {
        let rows = rows(wide_csv(1000).as_bytes());
        let Row::Contact(c) = &rows[0] else { panic!("{rows:?}") };
        assert_eq!(c.get("c1"), Some("v1"));
        assert_eq!(c.get("c999"), Some("v999"));
        assert_eq!(c.get("c1000"), None);
        assert_eq!(c.fields().count(), 1000);
        assert_eq!(c.fields().last(), Some(("c999", "v999")));
    }

    #[test]
    fn a_column_named_twice_is_refused() {
        let f = write_csv(b"phone,name,email,name\n+12015550100,Ann,a@example.com,Ann\n");
        let err = ContactReader::open(f.path(), options()).err().unwrap().to_string();
        assert!(err.contains(":1: column \"name\" appears twice"), "{err}");
    }

    #[test]
    fn a_field_longer_than_the_limit_rejects_only_its_row_with_the_line_and_the_limit() {
        let huge = "x".repeat(10 * 1024 * 1024);
        for (quoted, field) in [(false, huge.clone()), (true, format!("\"{huge}\""))] {
            let text = format!("phone,note\n+12015550100,ok\n+12015550101,{field}\n+12015550102,fine\n");
            let rows = rows(text.as_bytes());
            assert_eq!(rows.iter().map(line_of).collect::<Vec<_>>(), [2, 3, 4], "quoted: {quoted}");
            let Row::Rejected(r) = &rows[1] else { panic!("quoted: {quoted}: a 10 MB field was accepted") };
            assert!(r.reason.contains("\"note\"") && r.reason.contains("64 KiB"), "{}", r.reason);
            assert!(matches!(&rows[2], Row::Contact(c) if c.get("note") == Some("fine")));
        }
    }

    #[test]
    fn a_field_of_exactly_the_limit_is_kept() {
        let text = format!("phone,note\n+12015550100,{}\n", "x".repeat(64 * 1024));
        let rows = rows(text.as_bytes());
        let Row::Contact(c) = &rows[0] else { panic!("{:?}", rows[0]) };
        assert_eq!(c.get("note").map(str::len), Some(64 * 1024));
    }

    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_refused_with_its_path_before_it_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("c.csv");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // With the pipe held open for writing and a header waiting in it, a reader
        // that did open the pipe would read that header instead of blocking: a
        // missing check makes this test fail, not hang.
        let mut writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        writer.write_all(b"phone\n+12015550100\n").unwrap();
        let err = read_header(&fifo).expect_err("a named pipe is refused").to_string();
        assert!(err.starts_with(&fifo.display().to_string()), "{err}");
        assert!(err.contains("named pipe") && err.contains("not a regular file"), "{err}");
        let err = ContactReader::open(&fifo, options()).err().expect("a named pipe is refused").to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_folder_is_refused_as_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_header(dir.path()).expect_err("a folder is refused").to_string();
        assert!(err.starts_with(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("is a folder, not a regular file"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_to_a_regular_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real.csv"), "phone\n+12015550100\n").unwrap();
        let link = dir.path().join("c.csv");
        std::os::unix::fs::symlink("real.csv", &link).unwrap();
        let rows: Vec<Row> = ContactReader::open(&link, options()).unwrap().map(|r| r.unwrap()).collect();
        assert!(matches!(&rows[..], [Row::Contact(c)] if c.phone.as_str() == "+12015550100"), "{rows:?}");
    }
}
