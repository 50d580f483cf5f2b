//! Loading campaign files from disk: one file, or a whole folder (the good ones
//! plus, for each refused file, its problems).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Campaign, CampaignError, Diagnostic, Folders, parse_campaign};

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

/// A hash of a campaign's file and its contacts CSV, hex. A one-off campaign runs
/// once per content: a new drop of either file is a new run.
pub fn content_hash(campaign: &Campaign) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(&campaign.source)?);
    hasher.update([0u8]);
    let mut csv = std::fs::File::open(&campaign.contacts)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = csv.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads and checks one campaign file.
pub fn load_one(path: &Path, folders: &Folders) -> Result<Campaign, CampaignError> {
    let text = std::fs::read_to_string(path).map_err(|e| CampaignError {
        diagnostics: vec![Diagnostic { file: path.to_path_buf(), line: 1, message: format!("cannot read: {e}") }],
    })?;
    parse_campaign(path, &text, folders)
}

/// Every `*.toml` in the campaigns folder, sorted by file name so results are
/// stable. Two files claiming one name: the first (by file name) wins and the
/// second is refused.
pub fn load_folder(folders: &Folders) -> std::io::Result<LoadedFolder> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folders.campaigns)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut loaded = LoadedFolder::default();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match load_one(&file, folders) {
            Ok(c) => {
                if let Some(first) = seen.get(&c.name) {
                    let message = format!("campaign name {:?} is already used by {}", c.name, first.display());
                    loaded.refused.push((
                        file.clone(),
                        CampaignError { diagnostics: vec![Diagnostic { file, line: 1, message }] },
                    ));
                } else {
                    seen.insert(c.name.clone(), file);
                    loaded.campaigns.push(c);
                }
            }
            Err(e) => loaded.refused.push((file, e)),
        }
    }
    Ok(loaded)
}
