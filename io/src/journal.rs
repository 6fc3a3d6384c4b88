//! The embedded event log: append-only, checksummed, segmented files, one log per stream.
//!
//! A stream is one symbol's command log or one account partition's log; the directory
//! is named after the stream, never after the core that writes it, so moving a symbol to
//! another shard moves its owner, not its data.
//!
//! On disk: `<dir>/<first offset, 20 digits>.seg`, each a sequence of records
//! `[len: u32 LE][crc32c(payload): u32 LE][payload]`. A record's offset is its index in
//! the stream. A segment is closed at [`SEGMENT_BYTES`] and a new one started.
//!
//! Durability: [`Journal::append`] only buffers; [`Journal::commit`] writes the buffer
//! to a file opened with `O_DIRECT | O_DSYNC` (the write returns once the data is on
//! stable storage, like write + `fdatasync`). The shard calls `commit` once per batch of
//! requests (group commit) and acknowledges nothing before it returns.
//!
//! Direct I/O because of what a buffered `O_DSYNC` write costs: io_uring cannot complete
//! one inline, so each went to an io-wq worker thread, and each grew the file, so each
//! also committed the file system's journal; measured, the journal was a quarter of an
//! order's CPU. A direct write into blocks that already hold data completes in the ring
//! and changes no metadata. So a segment is zero-filled ahead of its end ([`AHEAD`], on a
//! thread of its own, well before the writes reach it), and every commit writes whole
//! blocks: the partial block that ends the segment is written again with the new records
//! after it. Its old bytes are written with the same values, so a write torn by a crash
//! leaves each sector old or new, and the records already durable intact either way.
//! Records are never empty, so the zeros after the last one read as the segment's end.
//!
//! Failures: a commit fails only when its records may not be durable. Closing a full
//! segment happens before the next write, and if it fails the current segment just grows
//! (it is retried at the next commit): records already durable are never reported as
//! failed. A failed write is cut off the file durably (truncate + fsync) before the
//! error is returned; if even that fails the error says so ([`JournalError::InDoubt`]) and
//! the next commit cuts first, writing nothing until it can.
//!
//! Recovery ([`recover`], synchronous, at start): every record is checked. A torn or
//! corrupt tail of the last segment — what a crash in the middle of a write leaves — is
//! cut off (the file is truncated) and never replayed. Damage anywhere else is an error:
//! the log is the source of truth and a hole in it is not something to guess past.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions as GlommioOpen};

/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// How far past its end a segment is kept zero-filled, at most (filled again when less
/// than half of it is left): half the segment's size, from [`MIN_AHEAD`] up, so that a
/// stream that holds little costs little disk.
pub const AHEAD: u64 = 4 << 20;
const MIN_AHEAD: u64 = 256 << 10;
const HEADER: usize = 8;
/// Larger records are refused (and, on read, taken as corruption).
pub const MAX_RECORD: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: corrupt record at byte {at} (not at the tail): refusing to start")]
    Corrupt { path: PathBuf, at: u64 },
    #[error("record of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("journal write failed: {0}")]
    Write(String),
    /// A write failed and what it may have left in the file could not be cut off: the
    /// records may be read back at the next start (the caller voids them, or answers
    /// that their fate is unknown). The next commit cuts them before it writes.
    #[error("journal write failed and could not be undone: {0}")]
    InDoubt(String),
    /// Another process writes the log now (see [`crate::tenancy`]): records delivered
    /// but not confirmed count only if they landed before its start.
    #[error("{0}")]
    Superseded(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_owned(), source }
}

/// What recovery found in a stream's directory.
pub struct Recovered {
    /// Every intact record, in order, from `first_offset`.
    pub records: Vec<Vec<u8>>,
    pub first_offset: u64,
    /// Bytes cut from a torn tail (0 when the log ended cleanly).
    pub cut_bytes: u64,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads a stream, cutting a torn tail. Creates the directory if it is new.
///
/// # Errors
/// I/O failures, and corruption anywhere but the tail of the last segment.
pub fn recover(dir: &Path) -> Result<Recovered, JournalError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let segs = segments(dir)?;
    let first_offset = segs.first().map_or(0, |s| s.0);
    let mut records = Vec::new();
    let mut cut_bytes = 0;
    // An empty segment holds nothing: a roll that failed before its first write may
    // have left one, named after an offset a later record took in the previous segment.
    let mut segs = segs;
    let mut removed = false;
    segs.retain(|(_, path)| {
        let empty = holds_nothing(path) && fs::remove_file(path).is_ok();
        removed |= empty;
        !empty
    });
    if removed {
        sync_dir(dir)?;
    }
    let first_offset = segs.first().map_or(first_offset, |s| s.0);
    for (i, (first, path)) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        if first_offset + records.len() as u64 != *first {
            return Err(JournalError::Corrupt { path: path.clone(), at: 0 });
        }
        let mut bytes = Vec::new();
        File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
        let (found, intact) = decode_segment(&bytes);
        records.extend(found.into_iter().map(<[u8]>::to_vec));
        // Zeros after the last record are the segment's filled space, not damage.
        if bytes[intact..].iter().any(|b| *b != 0) {
            if !last {
                return Err(JournalError::Corrupt { path: path.clone(), at: intact as u64 });
            }
            cut_bytes = (bytes.len() - intact) as u64;
            let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
            f.set_len(intact as u64).and_then(|()| f.sync_all()).map_err(io_err(path))?;
        }
    }
    Ok(Recovered { records, first_offset, cut_bytes })
}

/// Whether a segment file holds no record: empty, or zero-filled from its start (a roll
/// that failed before its first write leaves one).
fn holds_nothing(path: &Path) -> bool {
    let mut header = [0u8; HEADER];
    match File::open(path).and_then(|mut f| f.read(&mut header)) {
        Ok(n) => header[..n].iter().all(|b| *b == 0),
        Err(_) => false,
    }
}

/// The records of a segment's bytes, in order, up to the first that is not intact, and
/// how many bytes those intact records span (the rest is a torn tail, or damage).
pub fn decode_segment(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(payload) = bytes.get(at..).and_then(parse_record) {
        records.push(payload);
        at += HEADER + payload.len();
    }
    (records, at)
}

fn parse_record(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    // Length 0: the zeros after a segment's last record.
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let payload = bytes.get(HEADER..HEADER + len)?;
    (crc32c::crc32c(payload) == crc).then_some(payload)
}

/// Appends `payload` as one framed record to `out`.
///
/// # Errors
/// When the payload is over [`MAX_RECORD`], or empty.
pub fn frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), JournalError> {
    if payload.len() > MAX_RECORD {
        return Err(JournalError::TooLarge(payload.len()));
    }
    if payload.is_empty() {
        return Err(JournalError::Write("an empty record (zeros end a segment)".into()));
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// An open stream, positioned at its end. Lives on one glommio executor.
pub struct Journal {
    dir: PathBuf,
    /// The current segment.
    path: PathBuf,
    file: DmaFile,
    /// Byte length of the current segment's records.
    segment_len: u64,
    /// The segment's bytes from the start of the block that holds its end: written again,
    /// with the next records after them, by the next commit.
    tail: Vec<u8>,
    /// How far the segment file is zero-filled or written (its size).
    zeroed: u64,
    /// The next stretch of zeros, being written on a thread of its own: the new size.
    filling: Option<futures_channel::oneshot::Receiver<Result<u64, String>>>,
    /// Offset the next appended record gets.
    next_offset: u64,
    buffer: Vec<u8>,
    buffered: u64,
    /// A failed write may have left bytes past `segment_len` that could not be cut.
    dirty_tail: bool,
    /// Where a segment is closed ([`SEGMENT_BYTES`]).
    segment_bytes: u64,
    #[cfg(test)]
    faults: Faults,
}

/// Failures a test makes the journal meet.
#[cfg(test)]
#[derive(Default)]
struct Faults {
    /// The next roll fails (after creating the new file).
    roll: std::cell::Cell<bool>,
    /// The next write reaches the file, then reports an error.
    write: std::cell::Cell<bool>,
    /// Cutting a failed write fails, this many times.
    cut: std::cell::Cell<u32>,
}

impl Journal {
    /// Opens a stream for appending after [`recover`] told where it ends.
    ///
    /// # Errors
    /// I/O failures.
    pub async fn open(dir: &Path, next_offset: u64) -> Result<Self, JournalError> {
        let segs = segments(dir)?;
        let path = segs.last().map_or_else(|| dir.join(segment_name(next_offset)), |(_, path)| path.clone());
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = decode_segment(&bytes).1 as u64;
        let file = open_append(&path).await?;
        let block = len - len % file.alignment();
        let mut journal = Self {
            dir: dir.to_owned(),
            tail: bytes[block as usize..len as usize].to_vec(),
            zeroed: bytes.len() as u64,
            filling: None,
            path,
            file,
            segment_len: len,
            next_offset,
            buffer: Vec::new(),
            buffered: 0,
            dirty_tail: false,
            segment_bytes: SEGMENT_BYTES,
            #[cfg(test)]
            faults: Faults::default(),
        };
        // Filled before the first commit needs it: a new stream's first request does not
        // wait for the zeros.
        if journal.zeroed < journal.segment_len + journal.ahead() / 2 {
            journal.filling = Some(journal.fill(journal.segment_len + journal.ahead()));
        }
        Ok(journal)
    }

    /// Buffers a record; returns its offset. Nothing is durable before [`Self::commit`].
    ///
    /// # Errors
    /// When the record is over [`MAX_RECORD`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, JournalError> {
        frame(payload, &mut self.buffer)?;
        let offset = self.next_offset + self.buffered;
        self.buffered += 1;
        Ok(offset)
    }

    /// Whether records are waiting for [`Self::commit`].
    pub fn has_pending(&self) -> bool {
        self.buffered > 0
    }

    /// Writes and fdatasyncs everything appended so far.
    ///
    /// On error the buffered records are dropped (never written in part as far as the
    /// caller knows: a partial write is a torn tail, cut at the next start) and the
    /// segment is reopened for the next attempt.
    ///
    /// # Errors
    /// I/O failures; then none of the pending records may be acknowledged.
    pub async fn commit(&mut self) -> Result<(), JournalError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.buffer);
        let count = std::mem::take(&mut self.buffered);
        let len = bytes.len() as u64;
        if self.dirty_tail {
            self.cut().await.map_err(|e| JournalError::Write(format!("cutting an earlier failed write: {e}")))?;
            self.dirty_tail = false;
        }
        if self.segment_len >= self.segment_bytes
            && let Err(e) = self.roll().await
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not start a new segment: the current one grows");
        }
        // Whole blocks: the segment's partial last block again, the records, zeros.
        let start = self.segment_len - self.tail.len() as u64;
        let data = self.tail.len() + bytes.len();
        let blocks = self.file.align_up(data as u64);
        let result = async {
            self.fill_to(start + blocks).await?;
            let mut buffer = self.file.alloc_dma_buffer(blocks as usize);
            let out = buffer.as_bytes_mut();
            out[..self.tail.len()].copy_from_slice(&self.tail);
            out[self.tail.len()..data].copy_from_slice(&bytes);
            out[data..].fill(0);
            let n = self.file.write_at(buffer, start).await.map_err(|e| JournalError::Write(e.to_string()))?;
            if n as u64 != blocks {
                return Err(JournalError::Write(format!("short write: {n} of {blocks} bytes")));
            }
            #[cfg(test)]
            if self.faults.write.take() {
                return Err(JournalError::Write("injected".into()));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                self.segment_len += len;
                self.next_offset += count;
                let keep = self.file.align_down(data as u64) as usize;
                self.tail = match keep.checked_sub(self.tail.len()) {
                    Some(from) => bytes[from..].to_vec(),
                    None => [&self.tail[keep..], &bytes[..]].concat(),
                };
                if self.filling.is_none() && self.zeroed < self.segment_len + self.ahead() / 2 {
                    self.filling = Some(self.fill(self.zeroed.max(self.segment_len) + self.ahead()));
                }
                Ok(())
            }
            // Whatever reached the file is past segment_len: cut it now, durably, so
            // that a crash before the next commit cannot replay records whose requests
            // are answered 503.
            Err(e) => match self.cut().await {
                Ok(()) => Err(e),
                Err(cut) => {
                    tracing::error!(path = %self.path.display(), error = %cut, "could not cut a failed write");
                    self.dirty_tail = true;
                    Err(JournalError::InDoubt(format!("{e}; cutting it: {cut}")))
                }
            },
        }
    }

    /// Truncates the current segment to its committed length, durably.
    /// A fill in flight is waited for first: it would extend the file again, over
    /// blocks the next commits write.
    async fn cut(&mut self) -> io::Result<()> {
        if let Some(filling) = self.filling.take()
            && let Ok(Ok(size)) = filling.await
        {
            self.zeroed = size;
        }
        #[cfg(test)]
        if self.faults.cut.get() > 0 {
            self.faults.cut.set(self.faults.cut.get() - 1);
            return Err(io::Error::other("injected"));
        }
        let f = OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(self.segment_len)?;
        f.sync_all()?;
        self.zeroed = self.segment_len;
        Ok(())
    }

    /// Makes sure the segment file is zero-filled up to `end`: waits for the stretch
    /// being filled, or fills one now.
    async fn fill_to(&mut self, end: u64) -> Result<(), JournalError> {
        while self.zeroed < end {
            let filling = match self.filling.take() {
                Some(filling) => filling,
                None => self.fill(end + self.ahead()),
            };
            let filled = filling.await.map_err(|_| "the thread ended".to_owned()).and_then(|r| r);
            self.zeroed = filled.map_err(|e| JournalError::Write(format!("{}: zero-filling: {e}", self.path.display())))?;
        }
        Ok(())
    }

    /// How far ahead of the end to fill (see [`AHEAD`]).
    fn ahead(&self) -> u64 {
        (self.zeroed / 2).clamp(MIN_AHEAD, AHEAD)
    }

    /// Starts zero-filling the segment file from its size up to `to`, on a thread of
    /// its own; the receiver gets the new size.
    fn fill(&self, to: u64) -> futures_channel::oneshot::Receiver<Result<u64, String>> {
        let (tx, rx) = futures_channel::oneshot::channel();
        let (path, from, align) = (self.path.clone(), self.zeroed, self.file.alignment());
        let started = crate::offcore::spawn("journal-fill", move || {
            let _ = tx.send(zero_fill(&path, from, to, align).map_err(|e| e.to_string()));
        });
        if let Err(e) = started {
            let (tx, rx) = futures_channel::oneshot::channel();
            let _ = tx.send(Err(format!("no thread: {e}")));
            return rx;
        }
        rx
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    async fn roll(&mut self) -> Result<(), JournalError> {
        let path = self.dir.join(segment_name(self.next_offset));
        let file = open_append(&path).await?;
        #[cfg(test)]
        if self.faults.roll.take() {
            return Err(JournalError::Write("injected".into()));
        }
        self.file = file;
        self.path = path;
        self.segment_len = 0;
        self.tail.clear();
        self.zeroed = 0;
        // A fill of the old segment is no use to the new one.
        self.filling = None;
        Ok(())
    }
}

/// Extends the file at `path` from `from` to `to` (rounded up to blocks of `align`) with
/// zeros, written and synced, so that later direct writes there change no metadata. The
/// block holding `from` keeps its bytes (it may hold records): the file's size is first
/// set to its end, which reads as zeros. Returns the new size.
fn zero_fill(path: &Path, from: u64, to: u64, align: u64) -> io::Result<u64> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let start = from.div_ceil(align) * align;
    let end = to.div_ceil(align) * align;
    // Direct, so that the zeros leave no pages in the cache for the writes to evict (a
    // file system without direct I/O gets plain writes).
    let file = match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => OpenOptions::new().write(true).open(path)?,
        Err(e) => return Err(e),
    };
    file.set_len(start.max(file.metadata()?.len()))?;
    const CHUNK: usize = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(CHUNK, align.max(4096) as usize).map_err(io::Error::other)?;
    // SAFETY: the layout has a non-zero size; the memory is zeroed, freed below.
    let zeros = unsafe { std::alloc::alloc_zeroed(layout) };
    if zeros.is_null() {
        return Err(io::Error::other("out of memory"));
    }
    // SAFETY: `zeros` points to CHUNK initialised bytes until it is freed.
    let chunk = unsafe { std::slice::from_raw_parts(zeros, CHUNK) };
    let written = (|| {
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            file.write_all_at(&chunk[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    })();
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(zeros, layout) };
    written.map(|()| end.max(from))
}

async fn open_append(path: &Path) -> Result<DmaFile, JournalError> {
    if let Some(dir) = path.parent() {
        off_the_poll_ring(dir).await;
    }
    // O_DSYNC: a write completes only once its data (and the size that makes it
    // readable) is on stable storage, so a commit is one write instead of write +
    // fdatasync: half the io_uring operations per batch. Direct (glommio's DMA file):
    // see the module documentation.
    let file = GlommioOpen::new()
        .create(true)
        .write(true)
        .read(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(path)
        .await
        .map_err(|e| JournalError::Write(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        // A directory fsync blocks: not on the shard's core.
        let dir = dir.to_owned();
        crate::offcore::run("journal-dir-sync", move || sync_dir(&dir)).await.map_err(JournalError::Write)??;
    }
    Ok(file)
}

/// Keeps this thread's journal writes to the device that holds `dir` on glommio's
/// interrupt-driven ring instead of its polled one.
///
/// glommio sends the writes of a direct-I/O file to a ring set up for polled I/O when a
/// probe read there succeeds, which it does on devices without poll queues too (virtio
/// disks, most cloud volumes: a write's completion still comes by interrupt, and the
/// ring only finds it when polled). While such a write is in flight the executor cannot
/// sleep: it spins through its loop until the write completes, burning its core. And on
/// the core that takes the disk's interrupts the spinning holds up the completion work
/// the kernel runs there (an `O_DSYNC` write's cache flush), until the scheduler's next
/// tick: measured, each commit of the shard on that core took 3.8 ms instead of 0.3 ms
/// (perf/RESULTS.md, "The journal off the polled ring").
///
/// glommio has no setting for this; it probes once per thread and device and keeps the
/// answer. So before its first journal file on a device, each thread opens a scratch
/// file there for writing only: the probe's read fails, and glommio keeps every direct
/// file of that device on the interrupt-driven ring (its one log message about the
/// failed probe is filtered out at start, see `main.rs`). The scratch file must be the
/// thread's first direct file on the device to be probed, and it is: a shard opens its
/// logs one after another at start (`recover_accounts`, then `recover_symbols`), and a
/// file opened while the scratch file's probe was still running would be probed on its
/// own. A test below checks that the journal's writes stay off the polled ring.
async fn off_the_poll_ring(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    thread_local!(static DEVICES: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) });
    let Ok(device) = fs::metadata(dir).map(|m| m.dev()) else { return };
    if DEVICES.with_borrow(|done| done.contains(&device)) {
        return;
    }
    DEVICES.with_borrow_mut(|done| done.push(device));
    let probe = dir.join(".ring-probe");
    match GlommioOpen::new().create(true).write(true).dma_open(&probe).await {
        Ok(file) => drop(file.close().await),
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "journal writes may go to the polled ring"),
    }
    let _ = fs::remove_file(&probe);
}

/// Makes a new file's directory entry durable.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("journal-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn write_records(dir: &Path, records: &[&[u8]]) {
        fs::create_dir_all(dir).unwrap();
        let mut out = Vec::new();
        for r in records {
            frame(r, &mut out).unwrap();
        }
        fs::write(dir.join(segment_name(0)), out).unwrap();
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_not_replayed() {
        let dir = tmp("torn");
        write_records(&dir, &[b"one", b"two"]);
        let path = dir.join(segment_name(0));
        // A torn header and half a payload, as a crash mid-write leaves them.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let r = recover(&dir).unwrap();
        assert_eq!(r.records, [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(r.cut_bytes, 6);
        assert_eq!(recover(&dir).unwrap().cut_bytes, 0, "the cut is persistent");

        // A complete last record with a flipped payload byte: checksum mismatch.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let r = recover(&dir).unwrap();
        assert_eq!(r.records, [b"one".to_vec()]);
        assert_eq!(r.cut_bytes, 11);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_before_the_tail_is_refused() {
        let dir = tmp("middle");
        write_records(&dir, &[b"one"]);
        let mut second = Vec::new();
        frame(b"two", &mut second).unwrap();
        fs::write(dir.join(segment_name(1)), second).unwrap();
        let path = dir.join(segment_name(0));
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(matches!(recover(&dir), Err(JournalError::Corrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn appends_survive_reopen() {
        let dir = tmp("append");
        fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let r = recover(&d).unwrap();
                let mut j = Journal::open(&d, r.first_offset + r.records.len() as u64).await.unwrap();
                assert_eq!(j.append(b"a").unwrap(), 0);
                assert_eq!(j.append(b"bb").unwrap(), 1);
                j.commit().await.unwrap();
                assert_eq!(j.append(b"ccc").unwrap(), 2);
                j.commit().await.unwrap();
                drop(j);
                let r = recover(&d).unwrap();
                let mut j = Journal::open(&d, r.records.len() as u64).await.unwrap();
                assert_eq!(j.append(b"dddd").unwrap(), 3);
                j.commit().await.unwrap();
            })
            .unwrap()
            .join()
            .unwrap();
        let r = recover(&dir).unwrap();
        assert_eq!(r.records, [b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec(), b"dddd".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commits_go_to_the_interrupt_driven_ring_and_let_the_core_sleep() {
        let dir = tmp("rings");
        fs::create_dir_all(&dir).unwrap();
        let d = dir.clone();
        let (main, polled) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let mut j = Journal::open(&d, 0).await.unwrap();
                let _ = glommio::executor().io_stats();
                for n in 0..20u8 {
                    j.append(&[n + 1; 100]).unwrap();
                    j.commit().await.unwrap();
                }
                let stats = glommio::executor().io_stats();
                (stats.main_ring.file_writes().0, stats.poll_ring.file_writes().0)
            })
            .unwrap()
            .join()
            .unwrap();
        // On a disk whose polled-I/O probe succeeds (this one unless it is a tmpfs),
        // without the scratch file the twenty writes are the polled ring's.
        assert_eq!(polled, 0, "no journal write on the polled ring");
        assert!(main >= 20, "every commit written through the interrupt-driven ring ({main})");
        assert_eq!(recover(&dir).unwrap().records.len(), 20);
        assert!(!dir.join(".ring-probe").exists(), "the scratch file is gone");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_of_every_size_across_blocks_fills_and_reopens_read_back_whole() {
        let dir = tmp("blocks");
        let record = |n: usize| vec![(n % 251) as u8 + 1; 1 + (n * 7919) % 3000];
        let total = 3_000;
        let d = dir.clone();
        fs::create_dir_all(&dir).unwrap();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let mut n = 0;
                // Reopened twice on the way: the partial last block is read back.
                for stop in [700, 1_900, total] {
                    let r = recover(&d).unwrap();
                    assert_eq!(r.records.len(), n);
                    assert_eq!(r.cut_bytes, 0, "zeros after the records are not a torn tail");
                    let mut j = Journal::open(&d, n as u64).await.unwrap();
                    while n < stop {
                        for _ in 0..(1 + n % 17).min(stop - n) {
                            assert_eq!(j.append(&record(n)).unwrap(), n as u64);
                            n += 1;
                        }
                        j.commit().await.unwrap();
                    }
                    assert!(j.zeroed > j.segment_len, "filled ahead of the end");
                    assert_eq!(j.zeroed % j.file.alignment(), 0);
                }
            })
            .unwrap()
            .join()
            .unwrap();
        let r = recover(&dir).unwrap();
        assert_eq!(r.records.len(), total);
        assert!(r.records.iter().enumerate().all(|(n, r)| *r == record(n)));
        assert!(fs::metadata(dir.join(segment_name(0))).unwrap().len() > AHEAD, "filled again past the first stretch");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs `body` on a glommio executor against a fresh journal in `dir`.
    fn with_journal(dir: &Path, body: impl FnOnce(Journal) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
        fs::create_dir_all(dir).unwrap();
        let d = dir.to_owned();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || async move {
                let r = recover(&d).unwrap();
                let j = Journal::open(&d, r.first_offset + r.records.len() as u64).await.unwrap();
                body(j).await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_failed_segment_roll_never_fails_records_already_durable() {
        let dir = tmp("roll");
        with_journal(&dir, |mut j| {
            Box::pin(async move {
                // Segments of one record: every commit after the first rolls first.
                j.segment_bytes = 1;
                j.append(b"zero").unwrap();
                j.commit().await.unwrap();
                // The roll creates segment 1 and then fails: the record goes on in 0.
                j.faults.roll.set(true);
                j.append(b"one").unwrap();
                j.commit().await.expect("a failed roll does not fail the write");
                assert_eq!(j.path, j.dir.join(segment_name(0)));
                // The next commit rolls for real, to segment 2.
                j.append(b"two").unwrap();
                j.commit().await.unwrap();
                assert_eq!(j.path, j.dir.join(segment_name(2)));
            })
        });
        // The empty segment 1 the failed roll left is removed; nothing is lost or out of
        // place.
        assert!(dir.join(segment_name(1)).exists());
        let r = recover(&dir).unwrap();
        assert_eq!(r.records, [b"zero".to_vec(), b"one".to_vec(), b"two".to_vec()]);
        assert!(!dir.join(segment_name(1)).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_cut_durably_or_reported_in_doubt_and_cut_before_the_next() {
        let dir = tmp("cut");
        with_journal(&dir, |mut j| {
            Box::pin(async move {
                j.append(b"kept").unwrap();
                j.commit().await.unwrap();
                // The write lands, then fails; the cut works: a plain failure.
                j.faults.write.set(true);
                j.append(b"failed-and-cut").unwrap();
                assert!(matches!(j.commit().await, Err(JournalError::Write(_))));
                assert_eq!(fs::metadata(&j.path).unwrap().len(), j.segment_len, "cut at once");
                // The write lands, fails, and the cut fails too: in doubt.
                j.faults.write.set(true);
                j.faults.cut.set(1);
                j.append(b"failed-not-cut").unwrap();
                assert!(matches!(j.commit().await, Err(JournalError::InDoubt(_))));
                assert!(fs::metadata(&j.path).unwrap().len() > j.segment_len, "the bytes are still there");
                // The next commit cannot cut either: it writes nothing.
                j.faults.cut.set(1);
                j.append(b"refused").unwrap();
                assert!(j.commit().await.is_err());
                // Then it can: the stale bytes go before the new record is written.
                j.append(b"after").unwrap();
                j.commit().await.unwrap();
            })
        });
        let r = recover(&dir).unwrap();
        assert_eq!(r.records, [b"kept".to_vec(), b"after".to_vec()]);
        assert_eq!(r.cut_bytes, 0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
