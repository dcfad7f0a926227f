//! The usage spill file: bounded on disk, replayed in slices, never a window in which a record
//! exists nowhere.
//!
//! Two files: `PATH` takes the records that do not fit in memory (JSON lines, appended, each
//! append synced), and `PATH.replay` is the former `PATH` being published. A replay starts by
//! renaming `PATH` to `PATH.replay` (atomic), then reads it forward in slices no larger than
//! the room in the publisher's backlog, remembering how far it has read; the file is removed
//! only once everything read from it has been acknowledged by JetStream. Until then a crash
//! leaves it on disk and the next start replays it again from its beginning — resending a
//! record is harmless (its `Nats-Msg-Id` and ingestion's unique request id drop the second
//! copy). When publishing fails again mid-replay, the publisher hands back what it had read
//! and the replay resumes from the first record not yet acknowledged ([`Spill::rewind`]).
//!
//! `PATH` is capped at `max_bytes`. An append that would pass the cap first drops the file's
//! oldest records, down to three quarters of the cap (so that a full file is not rewritten on
//! every append), by writing the kept ones to `PATH.tmp` and renaming it over `PATH`: the loss
//! is counted (`switchboard_usage_records_total{result="evicted"}`), logged, and alerted on,
//! never silent. `PATH.replay` was once `PATH`, so the two together stay under twice the cap.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use switchboard_shared::usage::UsageRecord;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The spill file and the replay in progress.
#[derive(Debug)]
pub(super) struct Spill {
    path: PathBuf,
    replay: PathBuf,
    max_bytes: u64,
    /// Bytes of `replay` already read into the backlog.
    cursor: u64,
    /// `replay` has been read to its end.
    read_all: bool,
    /// Neither file exists (as last seen; an append clears it): nothing to replay, no need
    /// to look at the disk on every turn of the publisher.
    idle: std::sync::atomic::AtomicBool,
}

/// What an append did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Appended {
    /// Records written (the ones handed in, less any that alone pass the cap).
    pub written: u64,
    /// Older records dropped from the file to make room, and new ones that could not fit.
    pub evicted: u64,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn size_of(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

impl Spill {
    pub(super) fn new(path: PathBuf, max_bytes: u64) -> Self {
        Self {
            replay: sibling(&path, ".replay"),
            path,
            max_bytes: max_bytes.max(1),
            cursor: 0,
            read_all: false,
            idle: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Appends `records`, dropping the file's oldest ones first when the cap needs it.
    pub(super) async fn append(&self, records: &[&UsageRecord]) -> std::io::Result<Appended> {
        let mut lines: Vec<Vec<u8>> = Vec::with_capacity(records.len());
        for record in records {
            if let Ok(mut line) = serde_json::to_vec(record) {
                line.push(b'\n');
                lines.push(line);
            }
        }
        let mut done = Appended::default();
        // Newest last: a batch larger than the cap keeps its newest records.
        let mut bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
        let mut first = 0;
        while bytes > self.max_bytes && first < lines.len() {
            bytes -= lines[first].len() as u64;
            first += 1;
            done.evicted += 1;
        }
        let current = size_of(&self.path).await;
        if current + bytes > self.max_bytes {
            let keep = (self.max_bytes / 4 * 3).saturating_sub(bytes);
            done.evicted += self.drop_oldest(keep).await?;
        }
        let mut text = Vec::with_capacity(bytes as usize + 1);
        if !self.ends_with_newline().await {
            // A line torn by a crash mid-write must not swallow the next record.
            text.push(b'\n');
        }
        for line in &lines[first..] {
            text.extend_from_slice(line);
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await?;
        f.write_all(&text).await?;
        f.sync_data().await?;
        self.idle.store(false, std::sync::atomic::Ordering::Relaxed);
        done.written = (lines.len() - first) as u64;
        Ok(done)
    }

    /// Whether `path` is empty, missing, or ends a line.
    async fn ends_with_newline(&self) -> bool {
        let Ok(mut f) = tokio::fs::File::open(&self.path).await else {
            return true;
        };
        if f.seek(SeekFrom::End(-1)).await.is_err() {
            return true;
        }
        let mut last = [0u8; 1];
        f.read_exact(&mut last)
            .await
            .map_or(true, |_| last[0] == b'\n')
    }

    /// Rewrites `path` with only its newest lines that fit in `keep` bytes. Returns how many
    /// lines were dropped.
    async fn drop_oldest(&self, keep: u64) -> std::io::Result<u64> {
        let mut lengths = Vec::new();
        let mut lines = tokio::io::BufReader::new(tokio::fs::File::open(&self.path).await?);
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).await? > 0 {
            lengths.push(line.len() as u64);
            line.clear();
        }
        let (mut kept_bytes, mut kept) = (0u64, 0usize);
        for len in lengths.iter().rev() {
            if kept_bytes + len > keep {
                break;
            }
            kept_bytes += len;
            kept += 1;
        }
        let dropped = lengths.len() - kept;
        let skip: u64 = lengths[..dropped].iter().sum();
        let tmp = sibling(&self.path, ".tmp");
        let mut from = tokio::fs::File::open(&self.path).await?;
        from.seek(SeekFrom::Start(skip)).await?;
        let mut to = tokio::fs::File::create(&tmp).await?;
        tokio::io::copy(&mut from, &mut to).await?;
        to.sync_all().await?;
        tokio::fs::rename(&tmp, &self.path).await?;
        Ok(dropped as u64)
    }

    /// Up to `room` records of the replay, each with its offset in the replay file (for
    /// [`Self::rewind`]). Starts a replay of `path` when none is in progress.
    pub(super) async fn next_slice(
        &mut self,
        room: usize,
    ) -> std::io::Result<Vec<(UsageRecord, u64)>> {
        let idle = self.idle.load(std::sync::atomic::Ordering::Relaxed);
        if room == 0 || idle || (self.read_all && tokio::fs::try_exists(&self.replay).await?) {
            return Ok(Vec::new());
        }
        if !tokio::fs::try_exists(&self.replay).await? {
            if !tokio::fs::try_exists(&self.path).await? {
                self.idle.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(Vec::new());
            }
            tokio::fs::rename(&self.path, &self.replay).await?;
            (self.cursor, self.read_all) = (0, false);
        }
        let mut file = tokio::fs::File::open(&self.replay).await?;
        file.seek(SeekFrom::Start(self.cursor)).await?;
        let mut reader = tokio::io::BufReader::new(file);
        let mut slice = Vec::new();
        let mut line = Vec::new();
        while slice.len() < room {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).await? as u64;
            if n == 0 {
                self.read_all = true;
                break;
            }
            let at = self.cursor;
            self.cursor += n;
            match serde_json::from_slice::<UsageRecord>(&line) {
                Ok(record) => slice.push((record, at)),
                // A line torn by a crash mid-write: nothing to recover from it.
                Err(_) => tracing::warn!("skipping an unreadable line in the usage spill file"),
            }
        }
        Ok(slice)
    }

    /// Ends the replay once its file has been read to the end and nothing read from it is
    /// still unacknowledged (`pending`): the file is removed.
    pub(super) async fn finish_replay(&mut self, pending: bool) {
        if !self.read_all || pending {
            return;
        }
        match tokio::fs::remove_file(&self.replay).await {
            Ok(()) => tracing::info!("usage spill file replayed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                // Kept: sent again later, which the request ids make harmless.
                tracing::error!(error = %e, "cannot remove the replayed usage spill file");
                return;
            }
        }
        (self.cursor, self.read_all) = (0, false);
    }

    /// Resumes the replay at `offset` (the first record handed out but not acknowledged).
    pub(super) fn rewind(&mut self, offset: u64) {
        self.cursor = self.cursor.min(offset);
        self.read_all = false;
    }
}
