//! Loading campaign files from disk: the one listing of the campaigns folder,
//! one file, several files (two claiming one name: the first wins), or the
//! whole folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Campaign, CampaignError, Diagnostic, Folders, parse_campaign};
use crate::domain::Sha256Hex;

/// A folder's campaigns: the valid ones, and every refused file with why.
#[derive(Debug, Default)]
pub struct LoadedFolder {
    pub campaigns: Vec<Campaign>,
    pub refused: Vec<(PathBuf, CampaignError)>,
}

impl LoadedFolder {
    pub fn find(&self, name: &str) -> Option<&Campaign> {
        self.campaigns.iter().find(|c| c.name == name)
    }
}

/// Every `*.toml` file in the campaigns folder, sorted by file name so results
/// are stable.
pub fn list_campaign_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A hash of a campaign's file and its contacts CSV, hex. A one-off campaign runs
/// once per content: a new drop of either file is a new run.
pub fn content_hash(campaign: &Campaign) -> std::io::Result<String> {
    use std::io::Read;
    let mut hasher = Sha256Hex::default();
    hasher.update(&std::fs::read(&campaign.source)?);
    hasher.update(&[0u8]);
    let mut csv = std::fs::File::open(&campaign.contacts)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = csv.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// Reads and checks one campaign file.
pub fn load_one(path: &Path, folders: &Folders) -> Result<Campaign, CampaignError> {
    let text = std::fs::read_to_string(path).map_err(|e| CampaignError {
        diagnostics: vec![Diagnostic { file: path.to_path_buf(), line: 1, message: format!("cannot read: {e}") }],
    })?;
    parse_campaign(path, &text, folders)
}

/// The refusal of a file whose campaign name an earlier file already uses.
pub fn name_taken(file: &Path, name: &str, by: &Path) -> CampaignError {
    let message = format!("campaign name {name:?} is already used by {}", by.display());
    CampaignError { diagnostics: vec![Diagnostic { file: file.to_path_buf(), line: 1, message }] }
}

/// Loads `files` in order; of two files claiming one name, the first wins and
/// the second is refused.
pub fn load_files(files: &[PathBuf], folders: &Folders) -> Vec<(PathBuf, Result<Campaign, CampaignError>)> {
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    files
        .iter()
        .map(|file| {
            let loaded = load_one(file, folders).and_then(|c| match seen.get(&c.name) {
                Some(first) => Err(name_taken(file, &c.name, first)),
                None => {
                    seen.insert(c.name.clone(), file.clone());
                    Ok(c)
                }
            });
            (file.clone(), loaded)
        })
        .collect()
}

/// Every campaign file in the folder: the valid ones and the refused ones.
pub fn load_folder(folders: &Folders) -> std::io::Result<LoadedFolder> {
    let files = list_campaign_files(&folders.campaigns)?;
    let mut loaded = LoadedFolder::default();
    for (file, result) in load_files(&files, folders) {
        match result {
            Ok(c) => loaded.campaigns.push(c),
            Err(e) => loaded.refused.push((file, e)),
        }
    }
    Ok(loaded)
}
