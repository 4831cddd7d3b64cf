//! The worker: the scheduler that runs a fleet member, the per-shard
//! consumers, record retrieval from Kinesis and the `RecordProcessor`
//! interface the application implements.
