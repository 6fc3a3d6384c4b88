//! The log room: everything a shard writes to last, and reads back at start. It owns the
//! way to the event log (the embedded journal, or Kafka with its producers and the
//! delivery of result records), how records are encoded there, the numbers they carry,
//! the voids made on local disk for records the log may hold against a 503, and the
//! snapshot files.
//!
//! It knows nothing of books or accounts beyond the record types: the symbol and account
//! rooms above decide what to log and when; this room makes it durable and reads it back.

pub mod files;
pub mod kafka;
pub mod open;
pub mod voids;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use exchange_io::EventLog;

use super::core::Core;
use crate::accounts::AccountRecord;
use crate::wire::{self, StreamRecord};

pub use kafka::{Clients, KafkaBackend};
pub use open::{append_voids, open, Opened, Stream};

/// A stream's event log, whichever implementation was configured at start.
pub type Log = Box<dyn EventLog>;

/// The size past which a Kafka command record takes no more commands: far below the
/// broker's and librdkafka's limit on a record (about 1 MB by default), and a record
/// of hundreds of commands already costs the broker no more than one.
pub const RECORD_BYTES: usize = 128 * 1024;

pub struct LogRoom {
    pub core: Rc<Core>,
    /// Kafka, when it is the event log; `None`: the embedded journal.
    pub kafka: Option<KafkaBackend>,
    /// Next number to give a record on Kafka.
    wire_seq: Cell<u64>,
    /// Where the numbers handed out are reserved so they never repeat.
    numbering: Arc<crate::numbering::HighWater>,
    /// Where snapshots are copied as checkpoints (cold storage), when configured.
    pub checkpoints: Option<Arc<dyn crate::ports::CheckpointSink>>,
}

impl std::ops::Deref for LogRoom {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl LogRoom {
    pub fn new(
        core: Rc<Core>,
        kafka: Option<KafkaBackend>,
        (numbering, first_number): (Arc<crate::numbering::HighWater>, u64),
        checkpoints: Option<Arc<dyn crate::ports::CheckpointSink>>,
    ) -> Self {
        Self { core, kafka, wire_seq: Cell::new(first_number), numbering, checkpoints }
    }

    /// A command as its log stores it, alone in a record: compact postcard in the
    /// embedded journal, JSON on Kafka (where any tool may read it).
    pub fn encode_command(&self, symbol: usize, record: &StreamRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.append_command(symbol, record, &mut bytes);
        bytes
    }

    /// Whether a command log record being built takes one more command. On Kafka a
    /// record holds a batch of a stream's commands (one line each, see
    /// [`wire::append_command`]), up to [`RECORD_BYTES`]: one record, one delivery
    /// report and one write at the broker for all of them. The embedded journal's
    /// records hold one command each: its group commit already writes a batch at once.
    pub fn has_room(&self, record: &[u8]) -> bool {
        if self.kafka.is_some() { record.len() < RECORD_BYTES } else { record.is_empty() }
    }

    /// Adds a command to a command log record being built (see [`Self::has_room`]).
    pub fn append_command(&self, symbol: usize, record: &StreamRecord, bytes: &mut Vec<u8>) {
        if self.kafka.is_some() {
            wire::append_command(&self.map.symbols[symbol], record, self.next_wire_seq(), bytes);
        } else {
            let encoded = postcard::to_allocvec(record).unwrap_or_default();
            if bytes.is_empty() { *bytes = encoded } else { bytes.extend(encoded) }
        }
    }

    /// The commands of a command log record, in order, each with its `seq` on Kafka (the
    /// embedded journal's records are not numbered: it cuts what it failed to write, so
    /// nothing lands late there).
    ///
    /// # Errors
    /// A record the exchange did not write.
    pub fn decode_commands(&self, symbol: usize, bytes: &[u8]) -> Result<Vec<(StreamRecord, Option<u64>)>, String> {
        if self.kafka.is_some() {
            let found = wire::decode_record(&self.map.symbols[symbol], bytes)?;
            Ok(found.into_iter().map(|(record, seq)| (record, Some(seq))).collect())
        } else {
            postcard::from_bytes(bytes).map(|record| vec![(record, None)]).map_err(|e| e.to_string())
        }
    }

    /// An `EpochStarted` record for a symbol's log (Kafka only), and the floor it sets
    /// (see [`wire::EpochFloor`]).
    pub fn epoch_record(&self, symbol: usize) -> (Vec<u8>, wire::EpochFloor) {
        let seq = self.wire_seq.get();
        (self.encode_command(symbol, &StreamRecord::Epoch), wire::EpochFloor(seq))
    }

    pub fn encode_account(&self, record: &AccountRecord, partition: u32) -> Vec<u8> {
        if self.kafka.is_some() {
            wire::encode_account(record, partition, self.next_wire_seq())
        } else {
            postcard::to_allocvec(record).unwrap_or_default()
        }
    }

    /// # Errors
    /// A record the exchange did not write.
    pub fn decode_account(&self, bytes: &[u8]) -> Result<AccountRecord, String> {
        if self.kafka.is_some() { wire::decode_account(bytes) } else { postcard::from_bytes(bytes).map_err(|e| e.to_string()) }
    }

    /// Numbers records on Kafka: increasing, and never repeated by a later run
    /// ([`crate::numbering`]).
    fn next_wire_seq(&self) -> u64 {
        let n = self.wire_seq.get();
        self.wire_seq.set(n + 1);
        self.numbered(n);
        n
    }

    /// Drops what the start read from Kafka partitions (shared by streams on one
    /// partition): once a phase of the start is done, nobody reads them again.
    pub fn forget_reads(&self) {
        if let Some(k) = &self.kafka {
            k.read_cache.borrow_mut().clear();
        }
    }

    /// Tells the high-water mark the highest number handed out (an order number or a
    /// record's): it reserves the next block once half of this one is used.
    pub fn numbered(&self, highest: u64) {
        if highest.saturating_add(crate::numbering::BLOCK / 2) < self.numbering.reserved() {
            return;
        }
        match self.numbering.used(highest) {
            Ok(()) => tracing::info!(shard = self.id, reserved = self.numbering.reserved(), "numbering: next block reserved"),
            Err(e) => tracing::error!(shard = self.id, error = %e, "numbering: the high-water mark could not be written; numbers may repeat after a restart with the clock set back"),
        }
    }
}
