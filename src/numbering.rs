//! Numbers that must never repeat, across restarts too: order numbers and the sequence
//! numbers of records on Kafka (which name their event ids).
//!
//! Each run starts numbering above both the clock (in microseconds) and a high-water mark
//! kept in the data directory, and reserves a block above its start there, durably, before
//! it hands out a number. The next run starts above that reservation, so a clock that
//! stepped back across a restart cannot make it repeat a number. A run that uses half its
//! block reserves the next one (rarely: a block is 2^32 numbers).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Numbers reserved at a time.
pub const BLOCK: u64 = 1 << 32;
const FILE: &str = "numbering.hwm";

/// The data directory's high-water mark: every number below it may have been used.
#[derive(Debug)]
pub struct HighWater {
    path: PathBuf,
    reserved: Mutex<u64>,
}

impl HighWater {
    /// Reads the mark, starts above it and the clock, and reserves a block durably.
    /// Returns the first number this run may use.
    ///
    /// # Errors
    /// The mark cannot be read (unreadable, or not a number) or written.
    pub fn open(dir: &Path, clock_micros: u64) -> io::Result<(Self, u64)> {
        let path = dir.join(FILE);
        let mark = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let start = mark.max(clock_micros);
        let this = Self { path, reserved: Mutex::new(0) };
        this.reserve(start + BLOCK)?;
        Ok((this, start))
    }

    /// Called with the highest number handed out so far: reserves the next block once
    /// half of this one is used.
    ///
    /// # Errors
    /// The mark cannot be written; numbers past the reservation must not be used then.
    pub fn used(&self, highest: u64) -> io::Result<()> {
        if highest.saturating_add(BLOCK / 2) < self.reserved() {
            return Ok(());
        }
        self.reserve(highest.saturating_add(BLOCK))
    }

    /// The number below which this run may hand out numbers.
    pub fn reserved(&self) -> u64 {
        *self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `mark` durably (a new file, synced, renamed over the old, the directory
    /// synced), then takes it as the reservation.
    fn reserve(&self, mark: u64) -> io::Result<()> {
        let mut reserved = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if mark <= *reserved {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(format!("{mark}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        *reserved = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_stepped_back_never_repeats_a_number() {
        let dir = std::env::temp_dir().join(format!("numbering-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (first, start) = HighWater::open(&dir, 1_000_000).unwrap();
        assert_eq!(start, 1_000_000);
        // This run hands out numbers up to start + 10.
        first.used(start + 10).unwrap();
        drop(first);
        // The clock is now set far back: the next run still starts above every number
        // the first could have used.
        let (second, again) = HighWater::open(&dir, 1).unwrap();
        assert!(again >= start + BLOCK, "{again} vs {start}");
        // Half the block used: the next one is reserved.
        let before = second.reserved();
        second.used(again + BLOCK / 2 + 1).unwrap();
        assert!(second.reserved() > before);
        let (_, third) = HighWater::open(&dir, 0).unwrap();
        assert!(third >= again + BLOCK / 2 + 1 + BLOCK);
        fs::write(dir.join(FILE), "not a number").unwrap();
        assert!(HighWater::open(&dir, 0).is_err(), "a damaged mark stops the start");
        fs::remove_dir_all(&dir).unwrap();
    }
}
