//! The campaigns in force: for each file in the folder, the last valid version,
//! and what changed since the last scan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::campaign::{
    Campaign, CampaignError, Diagnostic, Folders, content_hash, list_campaign_files, load_one, name_taken,
};

/// What a scan found.
#[derive(Debug)]
pub enum ScanChange {
    /// A new file, or a changed one whose content differs.
    Loaded { campaign: Box<Campaign>, hash: String, previous: Option<String> },
    /// A new or changed file with mistakes; `kept` names the campaign whose
    /// previous valid version stays in force.
    Refused { file: PathBuf, error: CampaignError, kept: Option<String> },
    /// A campaign whose file is gone (or that was renamed).
    Removed { name: String, file: PathBuf },
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[derive(Debug, Clone)]
struct Entry {
    /// The campaign file's and its CSV's modification time and size when last read.
    file_stamp: Stamp,
    csv_stamp: Stamp,
    /// The last valid version, and the hash of its content.
    valid: Option<(Campaign, String)>,
}

/// Every campaign file seen, by path.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    entries: BTreeMap<PathBuf, Entry>,
    /// Files whose current content is refused, with why.
    refused: BTreeMap<PathBuf, CampaignError>,
}

impl Registry {
    /// The campaigns in force, by file name.
    pub fn campaigns(&self) -> Vec<Campaign> {
        self.entries.values().filter_map(|e| e.valid.as_ref().map(|(c, _)| c.clone())).collect()
    }

    /// (campaign name, content hash) of each campaign in force.
    pub fn hashes(&self) -> Vec<(String, String)> {
        self.entries.values().filter_map(|e| e.valid.as_ref().map(|(c, h)| (c.name.clone(), h.clone()))).collect()
    }

    /// Files whose current content is refused (their previous valid version, if
    /// any, is still among [`campaigns`](Self::campaigns)).
    pub fn refused(&self) -> Vec<(PathBuf, CampaignError)> {
        self.refused.iter().map(|(p, e)| (p.clone(), e.clone())).collect()
    }

    /// Reads every new or changed file in the folder and reports what changed.
    pub fn scan(&mut self, folders: &Folders) -> Vec<ScanChange> {
        let mut changes = Vec::new();
        let files = match list_campaign_files(&folders.campaigns) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(folder = %folders.campaigns.display(), error = %e, "cannot read the campaigns folder");
                return changes;
            }
        };

        self.refused.retain(|p, _| files.contains(p));
        for (path, entry) in std::mem::take(&mut self.entries) {
            if files.contains(&path) {
                self.entries.insert(path, entry);
            } else if let Some((campaign, _)) = entry.valid {
                changes.push(ScanChange::Removed { name: campaign.name, file: path });
            }
        }

        for file in files {
            let file_stamp = stamp(&file);
            if let Some(entry) = self.entries.get(&file) {
                let csv_stamp = entry.valid.as_ref().and_then(|(c, _)| c.contacts.as_deref().and_then(stamp));
                if entry.file_stamp == file_stamp && entry.csv_stamp == csv_stamp {
                    continue;
                }
            }
            let previous = self.entries.get(&file).and_then(|e| e.valid.clone());
            let kept = previous.as_ref().map(|(c, _)| c.name.clone());
            let loaded = load_one(&file, folders).and_then(|c| {
                let taken = self
                    .entries
                    .iter()
                    .filter(|(p, _)| **p != file)
                    .find_map(|(p, e)| e.valid.as_ref().filter(|(v, _)| v.name == c.name).map(|_| p.clone()));
                match taken {
                    Some(other) => Err(name_taken(&file, &c.name, &other)),
                    None => Ok(c),
                }
            });
            let loaded = loaded.and_then(|c| match content_hash(&c) {
                Ok(hash) => Ok((c, hash)),
                Err(e) => Err(single(
                    &file,
                    format!("cannot read {}: {e}", c.contacts.as_deref().unwrap_or(&c.source).display()),
                )),
            });
            match loaded {
                Ok((campaign, hash)) => {
                    let csv_stamp = campaign.contacts.as_deref().and_then(stamp);
                    let unchanged = previous.as_ref().is_some_and(|(c, h)| *h == hash && c.name == campaign.name);
                    if let Some((old, _)) = &previous
                        && old.name != campaign.name
                    {
                        changes.push(ScanChange::Removed { name: old.name.clone(), file: file.clone() });
                    }
                    if !unchanged {
                        changes.push(ScanChange::Loaded {
                            campaign: Box::new(campaign.clone()),
                            hash: hash.clone(),
                            previous: previous.map(|(_, h)| h),
                        });
                    }
                    self.refused.remove(&file);
                    self.entries.insert(file, Entry { file_stamp, csv_stamp, valid: Some((campaign, hash)) });
                }
                Err(error) => {
                    let csv_stamp = previous.as_ref().and_then(|(c, _)| c.contacts.as_deref().and_then(stamp));
                    self.refused.insert(file.clone(), error.clone());
                    changes.push(ScanChange::Refused { file: file.clone(), error, kept });
                    self.entries.insert(file, Entry { file_stamp, csv_stamp, valid: previous });
                }
            }
        }
        changes
    }
}

fn single(file: &Path, message: String) -> CampaignError {
    CampaignError { diagnostics: vec![Diagnostic { file: file.to_path_buf(), line: 1, message }] }
}
