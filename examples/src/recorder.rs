//! The recorder: a record processor that writes exactly what it processed,
//! one JSON line per record, so tests and the demo can check that nothing
//! was lost, what was processed twice, and in which order.
//!
//! Each batch's lines are written and flushed before the batch is handed
//! back (and before any checkpoint covers it), so after a crash the file
//! holds at least every record whose checkpoint was stored (at-least-once,
//! seen from outside). Checkpoints follow every batch, or, with a
//! checkpoint interval, the first batch after the interval has passed; at
//! shard end and on a graceful stop always.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::{InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor};
use serde::{Deserialize, Serialize};

/// One processed record, as a line of the output file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLine {
    /// The worker that processed it.
    pub worker: String,
    /// The stream it came from (absent in files written before streams
    /// were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The shard it came from.
    pub shard: String,
    /// Its sequence number.
    pub seq: String,
    /// Its sub-sequence number (0 unless KPL-aggregated).
    pub subseq: u64,
    /// Its partition key.
    pub pk: String,
    /// Its data, as UTF-8 (invalid bytes replaced).
    pub data: String,
    /// When Kinesis accepted it, in epoch milliseconds (0 if unknown).
    pub arrival_ms: u64,
    /// When it was processed, in epoch milliseconds.
    pub processed_ms: u64,
}

/// The output file, shared by every shard's recorder in a process.
#[derive(Clone)]
pub struct RecordLog {
    file: Arc<Mutex<File>>,
    worker: Arc<str>,
    checkpoint_interval: Duration,
}

impl RecordLog {
    /// Opens `path` for appending (creating it), for lines of `worker`.
    /// Recorders checkpoint after every batch.
    pub fn open(path: &Path, worker: &str) -> std::io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Self {
            file: Arc::new(Mutex::new(file)),
            worker: worker.into(),
            checkpoint_interval: Duration::ZERO,
        })
    }

    /// Recorders checkpoint after a batch only once `interval` has passed
    /// since their last checkpoint (zero: after every batch).
    pub fn with_checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// A processor for `shard_id` writing to this log.
    pub fn recorder(&self, shard_id: &str) -> Recorder {
        Recorder {
            log: self.clone(),
            shard: shard_id.to_owned(),
            last_checkpoint: Instant::now(),
        }
    }

    /// Appends `lines` in one write and flushes.
    fn append(&self, lines: &str) -> std::io::Result<()> {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(lines.as_bytes())?;
        file.flush()
    }
}

/// Reads every line of a recorder output file.
pub fn read_lines(path: &Path) -> std::io::Result<Vec<RecordLine>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).map_err(std::io::Error::other))
        .collect()
}

fn epoch_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes each batch to the [`RecordLog`], then checkpoints (every batch,
/// or once the log's checkpoint interval has passed).
pub struct Recorder {
    log: RecordLog,
    shard: String,
    /// When this shard was last checkpointed (or its recorder created).
    last_checkpoint: Instant,
}

#[async_trait]
impl RecordProcessor for Recorder {
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
        tracing::info!(checkpoint = %input.checkpoint, "recorder starting on shard");
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        let processed_ms = epoch_ms(SystemTime::now());
        let mut lines = String::new();
        for record in &input.records {
            let line = RecordLine {
                worker: self.log.worker.to_string(),
                stream: Some(input.stream_name.clone()),
                shard: self.shard.clone(),
                seq: record.sequence_number.to_string(),
                subseq: record.sub_sequence_number,
                pk: record.partition_key.clone(),
                data: String::from_utf8_lossy(&record.data).into_owned(),
                arrival_ms: record.approximate_arrival_timestamp.map_or(0, epoch_ms),
                processed_ms,
            };
            lines.push_str(&serde_json::to_string(&line)?);
            lines.push('\n');
        }
        self.log.append(&lines)?;
        if self.last_checkpoint.elapsed() >= self.log.checkpoint_interval {
            input.checkpointer.checkpoint().await?;
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}
