//! The one CSV reader setup: RFC 4180, UTF-8 (a BOM is fine), header row
//! required, blank lines ignored, quoted commas and newlines kept.
//!
//! Reading streams one record at a time, so memory does not grow with the file.
//! Every data row comes out as a [`Row`]: a [`Contact`] with its phone normalised
//! to E.164, or a rejection with the row's line number and the reason. Duplicate
//! detection is the caller's (the ledger's unique index, or a set in dry runs),
//! so that a million-row file does not need a million-entry set in memory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use chrono_tz::Tz;
use phonenumber::country::Id;

use crate::domain::{Phone, Rejection};

/// The column that may carry each contact's IANA time zone.
pub const TIMEZONE_COLUMN: &str = "timezone";

#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("{path}: cannot open contacts file: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path}:1: {message}")]
    Header { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// How to read one campaign's CSV.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub phone_column: String,
    pub default_region: Option<Id>,
    pub timezone: Tz,
}

/// A row that became a contact.
#[derive(Debug, Clone)]
pub struct Contact {
    /// The line where the row starts (the header is line 1).
    pub line: u64,
    pub phone: Phone,
    /// The contact's zone: its `timezone` column, else the campaign's.
    pub zone: Tz,
    header: Arc<Vec<String>>,
    values: Vec<String>,
}

impl Contact {
    /// The value of `column` in this row, if the file has that column.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.header.iter().position(|h| h == column).and_then(|i| self.values.get(i)).map(String::as_str)
    }

    /// Every (column, value) pair in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.header.iter().map(String::as_str).zip(self.values.iter().map(String::as_str))
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
    Ok(reader.header.as_ref().clone())
}

/// Streams the rows of a contacts CSV.
pub struct ContactReader {
    path: PathBuf,
    reader: csv::Reader<Box<dyn Read + Send>>,
    header: Arc<Vec<String>>,
    phone_index: usize,
    zone_index: Option<usize>,
    options: Option<ReadOptions>,
    record: csv::ByteRecord,
    /// Size and last byte of the file: the csv crate reports where a record
    /// *ends*, and these tell whether the last one ended with a newline.
    file_len: u64,
    ends_with_newline: bool,
}

impl ContactReader {
    pub fn open(path: &Path, options: ReadOptions) -> Result<Self, ContactsError> {
        let mut reader = Self::open_raw(path)?;
        reader.phone_index =
            reader.header.iter().position(|h| *h == options.phone_column).ok_or_else(|| ContactsError::Header {
                path: path.to_path_buf(),
                message: format!(
                    "no {:?} column for phone numbers (columns: {})",
                    options.phone_column,
                    reader.header.join(", ")
                ),
            })?;
        reader.options = Some(options);
        Ok(reader)
    }

    fn open_raw(path: &Path) -> Result<Self, ContactsError> {
        let open_err = |source| ContactsError::Open { path: path.to_path_buf(), source };
        let mut file = File::open(path).map_err(open_err)?;
        let file_len = file.metadata().map_err(open_err)?.len();
        let ends_with_newline = if file_len > 0 {
            use std::io::{Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1)).map_err(open_err)?;
            file.read_exact(&mut last).map_err(open_err)?;
            file.seek(SeekFrom::Start(0)).map_err(open_err)?;
            matches!(last[0], b'\n' | b'\r')
        } else {
            false
        };
        let mut reader = Self::from_reader(path, Box::new(BufReader::with_capacity(64 * 1024, file)))?;
        reader.file_len = file_len;
        reader.ends_with_newline = ends_with_newline;
        Ok(reader)
    }

    fn from_reader(path: &Path, input: Box<dyn Read + Send>) -> Result<Self, ContactsError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            // Rows with the wrong number of fields are rejected one by one, not
            // fatal to the whole file.
            .flexible(true)
            .from_reader(input);
        let header_err = |message: String| ContactsError::Header { path: path.to_path_buf(), message };
        let raw = reader.byte_headers().map_err(|e| header_err(format!("cannot read the header row: {e}")))?.clone();
        if raw.is_empty() || (raw.len() == 1 && raw[0].is_empty()) {
            return Err(header_err("the file is empty; a header row is required".into()));
        }
        let mut header = Vec::with_capacity(raw.len());
        for (i, field) in raw.iter().enumerate() {
            let mut name = std::str::from_utf8(field)
                .map_err(|_| header_err("the header row is not UTF-8".into()))?
                .trim()
                .to_string();
            if i == 0 {
                // Spreadsheet exports often start with a UTF-8 byte-order mark.
                name = name.trim_start_matches('\u{feff}').to_string();
            }
            if name.is_empty() {
                return Err(header_err(format!("column {} has no name", i + 1)));
            }
            if header.contains(&name) {
                return Err(header_err(format!("column {name:?} appears twice")));
            }
            header.push(name);
        }
        let zone_index = header.iter().position(|h| h == TIMEZONE_COLUMN);
        Ok(ContactReader {
            path: path.to_path_buf(),
            reader,
            header: Arc::new(header),
            phone_index: 0,
            zone_index,
            options: None,
            record: csv::ByteRecord::new(),
            file_len: 0,
            ends_with_newline: false,
        })
    }

    pub fn header(&self) -> &[String] {
        &self.header
    }

    /// The next row, `None` at the end. A read error that is not about one row
    /// (an I/O error) ends the import with an error naming the file.
    pub fn next_row(&mut self) -> Result<Option<Row>, ContactsError> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(false) => Ok(None),
            Ok(true) => Ok(Some(self.classify(self.record_start_line()))),
            Err(e) => match e.kind() {
                csv::ErrorKind::Io(_) => Err(ContactsError::Read { path: self.path.clone(), message: e.to_string() }),
                _ => {
                    let line = e.position().map_or(0, |p| p.line());
                    Ok(Some(Row::Rejected(Rejection {
                        line,
                        raw_phone: String::new(),
                        reason: format!("malformed CSV row: {e}"),
                    })))
                }
            },
        }
    }

    /// The line where the record just read starts. The csv crate reports the
    /// position *before* any blank lines it skipped, so the start is worked out
    /// back from where the record ended, less the newlines inside its fields.
    fn record_start_line(&self) -> u64 {
        let after = self.reader.position();
        let terminated = after.byte() < self.file_len || self.ends_with_newline;
        let last_line = if terminated { after.line().saturating_sub(1) } else { after.line() };
        let inner = self.record.iter().map(|f| f.iter().filter(|b| **b == b'\n').count() as u64).sum::<u64>();
        last_line.saturating_sub(inner).max(2)
    }

    fn classify(&self, line: u64) -> Row {
        let options = self.options.as_ref().expect("open() sets options before rows are read");
        let reject = |raw_phone: String, reason: String| Row::Rejected(Rejection { line, raw_phone, reason });
        let mut values = Vec::with_capacity(self.record.len());
        for field in self.record.iter() {
            match std::str::from_utf8(field) {
                Ok(v) => values.push(v.to_string()),
                Err(_) => return reject(String::new(), "row is not valid UTF-8".into()),
            }
        }
        let raw_phone = values.get(self.phone_index).cloned().unwrap_or_default();
        if values.len() != self.header.len() {
            return reject(raw_phone, format!("row has {} fields, the header has {}", values.len(), self.header.len()));
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
        Row::Contact(Contact { line, phone, zone, header: Arc::clone(&self.header), values })
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
}
