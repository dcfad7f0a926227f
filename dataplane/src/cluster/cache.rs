//! The last good snapshot on disk, so a data plane can start serving while the control plane
//! (and NATS) are down.
//!
//! The file holds a first line `switchboard-snapshot-cache-v1 <signed head as JSON>` and then
//! the snapshot's canonical JSON, exactly as it arrived: the installer checks the head's
//! signature at start as it does for NATS and gRPC, so a file someone wrote (or an older
//! release's file, which has no head line) is refused when signatures are required. It is replaced
//! atomically: written to a temporary file beside it, flushed to disk, renamed over the old
//! one, and the directory flushed — a crash leaves either the old file or the new one, never
//! half of one. The file is readable and writable by its owner only (mode 0600 on Unix,
//! whatever the umask): it holds the fleet's key hashes and sealed credentials.
//!
//! Config deltas applied after that snapshot are appended to a journal beside it,
//! `<file>.deltas` (each record: its length in decimal, a newline, the delta message exactly
//! as published, signature included; flushed to disk), which the next snapshot written empties.
//! A start loads the snapshot, then replays the journal through the same checks as NATS — so
//! a key revoked by a delta stays revoked across a restart while the control plane is away.
//! A torn last record (a crash mid-append) ends the replay there.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::cluster::install::Announced;

/// The first word of the head line.
const MAGIC: &[u8] = b"switchboard-snapshot-cache-v1 ";

/// The cached head (if the file has a readable one) and body, or `None` when there is no
/// cache file yet.
pub fn load(path: &Path) -> io::Result<Option<(Option<Announced>, Vec<u8>)>> {
    let file = match fs::read(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if let Some(rest) = file.strip_prefix(MAGIC)
        && let Some(end) = rest.iter().position(|b| *b == b'\n')
    {
        let head = serde_json::from_slice::<Announced>(&rest[..end]).ok();
        return Ok(Some((head, rest[end + 1..].to_vec())));
    }
    Ok(Some((None, file)))
}

/// Replaces the cache file with `announced` and `body`, atomically.
pub fn store(path: &Path, announced: Option<&Announced>, body: &[u8]) -> io::Result<()> {
    let mut contents = Vec::with_capacity(body.len() + 512);
    if let Some(head) = announced {
        contents.extend_from_slice(MAGIC);
        serde_json::to_writer(&mut contents, head)?;
        contents.push(b'\n');
    }
    contents.extend_from_slice(body);
    let body = contents.as_slice();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)?;
    let temporary = temporary_path(path);
    let written = (|| {
        let mut file = create_private(&temporary)?;
        file.write_all(body)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temporary);
        return Err(e);
    }
    // Make the rename itself durable. Not every platform can open a directory; the data is
    // safe either way.
    if let Ok(dir) = File::open(&parent) {
        let _ = dir.sync_all();
    }
    // The journal's deltas are all in this snapshot or older than it.
    match fs::remove_file(journal_path(path)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `<file>.deltas` beside the cache file `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".deltas");
    path.with_file_name(name)
}

/// Appends one delta message to the journal of the cache file `path`, flushed to disk.
pub fn append_delta(path: &Path, message: &[u8]) -> io::Result<()> {
    let journal = journal_path(path);
    let mut file = if journal.exists() {
        fs::OpenOptions::new().append(true).open(&journal)?
    } else {
        let mut file = create_private(&journal)?;
        file.flush()?;
        file
    };
    let mut record = format!("{}\n", message.len()).into_bytes();
    record.extend_from_slice(message);
    file.write_all(&record)?;
    file.sync_data()
}

/// The journal's delta messages in order (none when there is no journal); a torn or
/// malformed record ends the list.
pub fn load_deltas(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let file = match fs::read(journal_path(path)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    let mut rest = file.as_slice();
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let Some(len) = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            break;
        };
        let Some(message) = rest.get(end + 1..end + 1 + len) else {
            break;
        };
        out.push(message.to_vec());
        rest = &rest[end + 1 + len..];
    }
    Ok(out)
}

/// Creates (or truncates) `path` for writing, owner-only from the first byte on Unix: the
/// mode is given at creation and set again, since a leftover file keeps its old mode.
fn create_private(path: &Path) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

/// `<file>.tmp` beside `path`.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of the test's own (not created).
    fn scratch_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "switchboard-cache-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    #[test]
    fn stores_replaces_and_loads() {
        let dir = scratch_dir("test");
        let path = dir.join("nested").join("snapshot.json");
        assert_eq!(load(&path).unwrap(), None);
        store(&path, None, b"{\"revision\":1}").unwrap();
        assert_eq!(
            load(&path).unwrap().unwrap(),
            (None, b"{\"revision\":1}".to_vec())
        );
        let head = Announced {
            revision: 2,
            content_hash: "ab".into(),
            namespace: "ns".into(),
            issued_at_micros: 5,
            signature: "c2ln".into(),
        };
        store(&path, Some(&head), b"{\"revision\":2}").unwrap();
        assert_eq!(
            load(&path).unwrap().unwrap(),
            (Some(head), b"{\"revision\":2}".to_vec())
        );
        assert!(!temporary_path(&path).exists());
        // Deltas journalled after it come back in order; a torn last one is left out; the next
        // snapshot empties the journal.
        append_delta(&path, b"one\ntwo").unwrap();
        append_delta(&path, b"three").unwrap();
        assert_eq!(
            load_deltas(&path).unwrap(),
            [b"one\ntwo".to_vec(), b"three".to_vec()]
        );
        let mut torn = fs::read(journal_path(&path)).unwrap();
        torn.extend_from_slice(b"10\nabc");
        fs::write(journal_path(&path), torn).unwrap();
        assert_eq!(load_deltas(&path).unwrap().len(), 2);
        store(&path, None, b"{\"revision\":3}").unwrap();
        assert!(load_deltas(&path).unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch_dir("mode");
        let path = dir.join("snapshot.json");
        fs::create_dir_all(&dir).unwrap();
        // A leftover temporary file from a crash, readable by everyone: it must not pass its
        // mode on.
        fs::write(temporary_path(&path), b"old").unwrap();
        fs::set_permissions(temporary_path(&path), fs::Permissions::from_mode(0o644)).unwrap();
        store(&path, None, b"{\"revision\":1}").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "cache file mode {mode:o}");
        store(&path, None, b"{\"revision\":2}").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "replaced cache file mode {mode:o}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
