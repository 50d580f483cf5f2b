//! Loading campaign files from disk: the one listing of the campaigns folder,
//! one file, several files (two claiming one name: the first wins), or the
//! whole folder.

use std::collections::HashMap;
use std::io::Read;
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
    let mut hasher = Sha256Hex::default();
    hasher.update(&std::fs::read(&campaign.source)?);
    hasher.update(&[0u8]);
    let Some(contacts) = &campaign.contacts else {
        return Ok(hasher.finish());
    };
    let mut csv = std::fs::File::open(contacts)?;
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

/// The largest campaign file read. Real ones are a few dozen lines; a bigger
/// one is something else saved under a `.toml` name (a CSV, a log), and is
/// refused before it is read rather than held in memory and parsed.
pub const MAX_CAMPAIGN_FILE_BYTES: u64 = 1024 * 1024;

/// Reads and checks one campaign file.
pub fn load_one(path: &Path, folders: &Folders) -> Result<Campaign, CampaignError> {
    let refuse = |message: String| CampaignError {
        diagnostics: vec![Diagnostic { file: path.to_path_buf(), line: 1, message }],
    };
    let too_big = |size: u64| {
        format!(
            "file is {size} bytes; a campaign file may be at most {MAX_CAMPAIGN_FILE_BYTES} bytes ({} MiB)",
            MAX_CAMPAIGN_FILE_BYTES / (1024 * 1024)
        )
    };
    // The file's kind and size come from its metadata, before it is opened:
    // opening a FIFO would wait for a writer, and a device may never end.
    let meta = std::fs::metadata(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(refuse(format!("{}, not a campaign file: campaign files are regular files", file_kind(&meta))));
    }
    if meta.len() > MAX_CAMPAIGN_FILE_BYTES {
        return Err(refuse(too_big(meta.len())));
    }
    // The file may grow between the look and the read: read one byte past the
    // limit at most, to notice.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CAMPAIGN_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| refuse(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CAMPAIGN_FILE_BYTES {
        return Err(refuse(too_big(bytes.len() as u64)));
    }
    let text =
        String::from_utf8(bytes).map_err(|_| refuse("cannot read: stream did not contain valid UTF-8".into()))?;
    parse_campaign(path, &text, folders)
}

/// What a path that is not a regular file is, for messages.
fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    "a special file"
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
        .zip(load_each(files, folders))
        .map(|(file, loaded)| {
            let loaded = loaded.and_then(|c| match seen.get(&c.name) {
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

/// Folders smaller than this are read on the calling thread alone.
const FILES_PER_THREAD: usize = 64;

/// Reads and checks each file, in order. A large folder is split between as
/// many threads as there are cores: each file is independent of the others,
/// and a folder of a thousand campaigns is read at every start, every rescan
/// and every `status`.
fn load_each(files: &[PathBuf], folders: &Folders) -> Vec<Result<Campaign, CampaignError>> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let threads = cores.min(files.len() / FILES_PER_THREAD);
    if threads <= 1 {
        return files.iter().map(|file| load_one(file, folders)).collect();
    }
    std::thread::scope(|scope| {
        let parts: Vec<_> = files
            .chunks(files.len().div_ceil(threads))
            .map(|part| scope.spawn(move || part.iter().map(|file| load_one(file, folders)).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn folders(tmp: &tempfile::TempDir) -> Folders {
        let campaigns = tmp.path().join("campaigns");
        let flows = tmp.path().join("flows");
        std::fs::create_dir_all(&campaigns).unwrap();
        std::fs::create_dir_all(&flows).unwrap();
        std::fs::write(campaigns.join("c.csv"), "phone\n+12015550123\n").unwrap();
        Folders { campaigns, flows }
    }

    const BODY: &str = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\ncontacts = \"c.csv\"\n";

    fn only_message(err: &CampaignError) -> (u64, &str) {
        assert_eq!(err.diagnostics.len(), 1, "{err}");
        (err.diagnostics[0].line, err.diagnostics[0].message.as_str())
    }

    #[test]
    fn a_campaign_file_over_one_mebibyte_is_refused_with_its_size_and_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = folders(&tmp);
        let file = folders.campaigns.join("big.toml");
        // A valid campaign padded with a comment to one byte past the limit.
        let mut text = BODY.to_string();
        text.push('#');
        text.push_str(&"x".repeat(1024 * 1024 - text.len()));
        text.push('\n');
        assert_eq!(text.len(), 1024 * 1024 + 1);
        std::fs::write(&file, &text).unwrap();
        let err = load_one(&file, &folders).unwrap_err();
        assert_eq!(
            only_message(&err),
            (1, "file is 1048577 bytes; a campaign file may be at most 1048576 bytes (1 MiB)")
        );

        // At the limit exactly, it is read.
        std::fs::write(&file, text.replacen("#x", "#", 1)).unwrap();
        assert!(load_one(&file, &folders).is_ok());
    }

    #[test]
    fn a_directory_named_as_a_campaign_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = folders(&tmp);
        let dir = folders.campaigns.join("folder.toml");
        std::fs::create_dir(&dir).unwrap();
        let err = load_one(&dir, &folders).unwrap_err();
        assert_eq!(only_message(&err), (1, "a directory, not a campaign file: campaign files are regular files"));
    }

    #[test]
    fn a_folder_read_on_several_threads_keeps_file_order_and_the_first_file_keeps_a_shared_name() {
        let tmp = tempfile::tempdir().unwrap();
        let folders = folders(&tmp);
        // Enough files for every core's share; one name claimed at both ends,
        // so the two claims land in different threads' parts, and a refused
        // file in the middle.
        let count = FILES_PER_THREAD * 4 + 3;
        let mut files = Vec::new();
        for i in 0..count {
            let file = folders.campaigns.join(format!("c{i:04}.toml"));
            let text = match i {
                0 => format!("name = \"shared\"\n{BODY}"),
                _ if i == count - 1 => format!("name = \"shared\"\n{BODY}"),
                _ if i == count / 2 => "kind = \"survey\"\n".to_string(),
                _ => BODY.to_string(),
            };
            std::fs::write(&file, text).unwrap();
            files.push(file);
        }
        let loaded = load_files(&files, &folders);
        assert_eq!(loaded.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(), files);
        for (i, (file, result)) in loaded.iter().enumerate() {
            match i {
                0 => assert_eq!(result.as_ref().unwrap().name, "shared"),
                _ if i == count - 1 => {
                    let err = result.as_ref().unwrap_err();
                    assert!(only_message(err).1.contains("already used by"), "{err}");
                    assert!(only_message(err).1.contains("c0000.toml"), "{err}");
                }
                _ if i == count / 2 => assert!(result.is_err(), "{}", file.display()),
                _ => assert_eq!(result.as_ref().unwrap().name, format!("c{i:04}")),
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_named_as_a_campaign_file_is_refused_without_being_opened() {
        use std::io::{Read, Write};
        let tmp = tempfile::tempdir().unwrap();
        let folders = folders(&tmp);
        let fifo = folders.campaigns.join("pipe.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        // A writer that feeds the FIFO once someone opens it for reading, so a
        // loader that opens it reads this text instead of hanging.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                w.write_all(BODY.as_bytes()).unwrap();
            })
        };
        let loaded = load_one(&fifo, &folders);
        let err = loaded.expect_err("a FIFO is refused");
        assert_eq!(only_message(&err), (1, "a FIFO, not a campaign file: campaign files are regular files"));
        // The loader never opened it: open it here so the writer finishes.
        let mut text = String::new();
        std::fs::File::open(&fifo).unwrap().read_to_string(&mut text).unwrap();
        writer.join().unwrap();
        assert_eq!(text, BODY);
    }
}
