//! Processors for the unit tests.

use async_trait::async_trait;
use kcl_checkpoint::Checkpointer;

use crate::{InitializationInput, ProcessRecordsInput, ProcessorError, RecordProcessor};

/// Does nothing but checkpoint at shard end.
pub struct NoopProcessor;

#[async_trait]
impl RecordProcessor for NoopProcessor {
    async fn initialize(&mut self, _: InitializationInput) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn process_records(&mut self, _: ProcessRecordsInput) -> Result<(), ProcessorError> {
        Ok(())
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        checkpointer.checkpoint().await?;
        Ok(())
    }
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::Record;

/// What scripted processors did, shared by every processor of a test.
#[derive(Default)]
pub struct Journal {
    /// Every call, in order: `init <checkpoint>`, `batch <first>..<last>`,
    /// `lease_lost`, `shard_ended`, `shutdown`.
    pub calls: Vec<String>,
    /// Records of batches that succeeded, in order.
    pub processed: Vec<Record>,
    /// When each batch that succeeded was processed (tokio's clock), with
    /// its shard.
    pub batch_times: Vec<(String, tokio::time::Instant)>,
    /// Data of records to fail on, with how many more times to fail.
    pub fail: HashMap<String, u32>,
    /// Data of records to panic on, with how many more times to panic.
    pub panic: HashMap<String, u32>,
    /// Data of records to hang on (never return), with how many more times.
    pub hang: HashMap<String, u32>,
    /// How many more shard ends to return from without checkpointing.
    pub skip_shard_end_checkpoints: u32,
    /// Checkpoint after each batch.
    pub checkpoint_batches: bool,
    /// Never return from `shutdown_requested`.
    pub hang_on_shutdown: bool,
    /// How many more `shard_ended` calls panic.
    pub panic_on_shard_end: u32,
    /// `initialize` panics once `shard_ended` has been called.
    pub panic_in_initialize_after_shard_end: bool,
    /// Prepare a checkpoint after each batch (at its last record, with
    /// that record's data as state) instead of checkpointing.
    pub prepare_batches: bool,
    /// Panic when a checkpoint or prepared checkpoint fails (as a processor
    /// that unwraps it does).
    pub panic_on_checkpoint_error: bool,
    /// Every `initialize` input, in order.
    pub initializations: Vec<InitializationInput>,
    /// Every record processed, as `stream:data` (the stream its input
    /// named).
    pub by_stream: Vec<String>,
}

/// A processor that follows a shared [`Journal`].
pub struct Scripted(pub Arc<Mutex<Journal>>);

impl Scripted {
    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.0.lock().unwrap()
    }
}

#[async_trait]
impl RecordProcessor for Scripted {
    async fn initialize(&mut self, input: InitializationInput) -> Result<(), ProcessorError> {
        let mut journal = self.journal();
        let after_shard_end = journal.calls.iter().any(|c| c == "shard_ended");
        journal.calls.push(format!("init {}", input.checkpoint));
        journal.initializations.push(input);
        if journal.panic_in_initialize_after_shard_end && after_shard_end {
            drop(journal);
            panic!("scripted panic in initialize");
        }
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput) -> Result<(), ProcessorError> {
        let hang = {
            let mut journal = self.journal();
            input.records.iter().any(|record| {
                let data = String::from_utf8_lossy(&record.data).into_owned();
                match journal.hang.get_mut(&data).filter(|n| **n > 0) {
                    Some(left) => {
                        *left -= 1;
                        true
                    }
                    None => false,
                }
            })
        };
        if hang {
            std::future::pending::<()>().await;
        }
        let (checkpoint, prepare, panic_on_error) = {
            let mut journal = self.journal();
            let first = &input.records[0].sequence_number;
            let last = &input.records[input.records.len() - 1].sequence_number;
            journal.calls.push(format!("batch {first}..{last}"));
            for record in &input.records {
                let data = String::from_utf8_lossy(&record.data).into_owned();
                if let Some(left) = journal.panic.get_mut(&data).filter(|n| **n > 0) {
                    *left -= 1;
                    drop(journal);
                    panic!("scripted panic on {data}");
                }
                if let Some(left) = journal.fail.get_mut(&data).filter(|n| **n > 0) {
                    *left -= 1;
                    return Err(format!("scripted failure on {data}").into());
                }
            }
            journal.processed.extend(input.records.iter().cloned());
            for record in &input.records {
                let data = String::from_utf8_lossy(&record.data);
                let line = format!("{}:{data}", input.stream_name);
                journal.by_stream.push(line);
            }
            let shard = input.checkpointer.shard_id().to_owned();
            journal
                .batch_times
                .push((shard, tokio::time::Instant::now()));
            (
                journal.checkpoint_batches,
                journal.prepare_batches,
                journal.panic_on_checkpoint_error,
            )
        };
        let written = if prepare {
            let last = &input.records[input.records.len() - 1];
            input
                .checkpointer
                .prepare_checkpoint(None, Some(last.data.to_vec()))
                .await
        } else if checkpoint {
            input.checkpointer.checkpoint().await
        } else {
            Ok(())
        };
        if let Err(error) = written {
            if panic_on_error {
                panic!("scripted panic on a failed checkpoint: {error}");
            }
            return Err(error.into());
        }
        Ok(())
    }

    async fn lease_lost(&mut self) {
        self.journal().calls.push("lease_lost".into());
    }

    async fn shard_ended(&mut self, checkpointer: Checkpointer) -> Result<(), ProcessorError> {
        let skip = {
            let mut journal = self.journal();
            journal.calls.push("shard_ended".into());
            if journal.panic_on_shard_end > 0 {
                journal.panic_on_shard_end -= 1;
                drop(journal);
                panic!("scripted panic at shard end");
            }
            let skip = journal.skip_shard_end_checkpoints > 0;
            journal.skip_shard_end_checkpoints =
                journal.skip_shard_end_checkpoints.saturating_sub(1);
            skip
        };
        if !skip {
            checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: Checkpointer,
    ) -> Result<(), ProcessorError> {
        let hang = {
            let mut journal = self.journal();
            journal.calls.push("shutdown".into());
            journal.hang_on_shutdown
        };
        if hang {
            std::future::pending::<()>().await;
        }
        checkpointer.checkpoint().await?;
        Ok(())
    }
}
