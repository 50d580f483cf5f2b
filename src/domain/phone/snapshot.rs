//! The part of the `phonenumber` crate's metadata that [`super::matcher`]
//! follows, as plain text kept beside this file (`metadata.json`).
//!
//! The crate builds its metadata once per process, and that build checks
//! every one of its thousands of patterns with a full regex parse: under
//! callgrind about 600 million instructions, more than `status` spends on a
//! ledger and a thousand campaign files together, paid by every command that
//! reads a phone number (a campaign file's `from` is one). The matcher only
//! needs the patterns' text, the regions' prefixes and lengths, and the
//! library's indexes from id and country code to regions; those are copied
//! here, in the library's order, and read with one JSON parse.
//!
//! The copy is the library's own data, not a second source of truth: a test
//! below builds it again from the library in use and fails on any
//! difference, and writes the file afresh when asked to (after a
//! `phonenumber` upgrade): `FLOWCAST_WRITE_PHONE_METADATA=1 cargo test
//! --lib the_numbering_snapshot`, then the same without the variable.

use serde::{Deserialize, Serialize};

/// Every metadata entry the library holds, with its indexes.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// Every entry, grouped by country code in ascending order, each code's
    /// entries in the library's `by_code` order.
    pub entries: Vec<Region>,
    /// The library's `by_id`: an id to its entry.
    pub by_id: Vec<(String, usize)>,
    /// The library's `region` list for each country code (main region
    /// first), as entries; a code with one region lists its first entry.
    pub by_code: Vec<(u16, Vec<usize>)>,
    /// The library's `by_code(..)[0]` for each country code.
    pub first_for_code: Vec<(u16, usize)>,
}

/// One metadata entry: a region, or a non-geographic code (id "001").
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Region {
    pub id: String,
    pub code: u16,
    pub national_prefix: Option<String>,
    pub national_prefix_for_parsing: Option<String>,
    pub national_prefix_transform_rule: Option<String>,
    pub international_prefix: Option<String>,
    pub leading_digits: Option<String>,
    pub general: Descriptor,
    /// The descriptors of which one must match for `is_valid`, in the order
    /// the library's `number_type` tries them: premium rate, toll free,
    /// shared cost, VoIP, personal, pager, UAN, voicemail, fixed line,
    /// mobile (those the region has).
    pub types: Vec<Descriptor>,
}

/// A descriptor's national-number pattern and its possible lengths (none
/// listed: any).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Descriptor {
    pub pattern: String,
    pub lengths: Vec<u16>,
    pub local_lengths: Vec<u16>,
}

const TEXT: &str = include_str!("metadata.json");

/// The snapshot kept beside this file.
pub(super) fn load() -> Snapshot {
    serde_json::from_str(TEXT).expect("metadata.json is the snapshot this module writes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::metadata::{DATABASE, Metadata};

    fn descriptor(d: &phonenumber::metadata::Descriptor) -> Descriptor {
        Descriptor {
            pattern: d.national_number().as_str().to_string(),
            lengths: d.possible_length().to_vec(),
            local_lengths: d.possible_local_length().to_vec(),
        }
    }

    fn region(meta: &Metadata) -> Region {
        let d = meta.descriptors();
        let types = [
            d.premium_rate(),
            d.toll_free(),
            d.shared_cost(),
            d.voip(),
            d.personal_number(),
            d.pager(),
            d.uan(),
            d.voicemail(),
            d.fixed_line(),
            d.mobile(),
        ];
        Region {
            id: meta.id().to_string(),
            code: meta.country_code(),
            national_prefix: meta.national_prefix().map(str::to_string),
            national_prefix_for_parsing: meta.national_prefix_for_parsing().map(|re| re.as_str().to_string()),
            national_prefix_transform_rule: meta.national_prefix_transform_rule().map(str::to_string),
            international_prefix: meta.international_prefix().map(|re| re.as_str().to_string()),
            leading_digits: meta.leading_digits().map(|re| re.as_str().to_string()),
            general: descriptor(d.general()),
            types: types.into_iter().flatten().map(descriptor).collect(),
        }
    }

    /// The snapshot as the library in use would give it.
    fn from_library() -> Snapshot {
        let db = &*DATABASE;
        let mut metas: Vec<&Metadata> = Vec::new();
        let mut first_for_code = Vec::new();
        // The non-geographic entries all have the id "001": only their
        // codes and their places tell them apart.
        for code in 0..=u16::MAX {
            if let Some(found) = db.by_code(&code) {
                first_for_code.push((code, metas.len()));
                metas.extend(found);
            }
        }
        let index_of =
            |meta: &Metadata| metas.iter().position(|m| std::ptr::eq(*m, meta)).expect("an entry the library lists");
        let mut by_id = Vec::new();
        let mut by_code = Vec::new();
        for meta in &metas {
            if let Some(found) = db.by_id(meta.id())
                && !by_id.iter().any(|(id, _)| id == meta.id())
            {
                by_id.push((meta.id().to_string(), index_of(found)));
            }
            let code = meta.country_code();
            if by_code.iter().any(|(c, _)| *c == code) {
                continue;
            }
            let regions = db.region(&code).unwrap_or_default();
            let indices = if let [_] = regions[..] {
                vec![first_for_code.iter().find(|(c, _)| *c == code).expect("a listed code").1]
            } else {
                regions.iter().filter_map(|r| db.by_id(*r)).map(index_of).collect()
            };
            by_code.push((code, indices));
        }
        Snapshot { entries: metas.into_iter().map(region).collect(), by_id, by_code, first_for_code }
    }

    /// JSON with one entry or index item per line: diffs after an upgrade
    /// show which regions changed.
    fn write(snapshot: &Snapshot) -> String {
        fn lines<T: Serialize>(items: &[T]) -> String {
            let items: Vec<String> =
                items.iter().map(|item| serde_json::to_string(item).expect("plain data serialises")).collect();
            items.join(",\n  ")
        }
        format!(
            "{{\n\"entries\": [\n  {}\n],\n\"by_id\": [\n  {}\n],\n\"by_code\": [\n  {}\n],\n\"first_for_code\": [\n  {}\n]\n}}\n",
            lines(&snapshot.entries),
            lines(&snapshot.by_id),
            lines(&snapshot.by_code),
            lines(&snapshot.first_for_code),
        )
    }

    #[test]
    fn the_numbering_snapshot_is_the_librarys_metadata() {
        let fresh = from_library();
        let text = write(&fresh);
        assert_eq!(serde_json::from_str::<Snapshot>(&text).expect("the written text parses"), fresh);
        if std::env::var_os("FLOWCAST_WRITE_PHONE_METADATA").is_some() {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain/phone/metadata.json");
            std::fs::write(&path, &text).expect("the source tree is writable");
            // This build holds the file as it was: the comparison below is
            // the next run's, once the new text is compiled in.
            println!("wrote {} ({} entries); run the test again to compare", path.display(), fresh.entries.len());
            return;
        }
        let kept = load();
        assert!(
            kept == fresh,
            "src/domain/phone/metadata.json differs from the phonenumber crate's metadata (an upgrade?): \
             write it again with FLOWCAST_WRITE_PHONE_METADATA=1 cargo test --lib the_numbering_snapshot"
        );
        assert!(fresh.entries.len() > 200, "{} entries", fresh.entries.len());
    }
}
