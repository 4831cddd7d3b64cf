//! Shard leases: how a fleet of workers shares the shards of a stream through
//! one DynamoDB table.
//!
//! A lease per shard records who processes the shard and how far it has been
//! checkpointed, in the Java KCL's item format. Every write that depends on
//! ownership is conditional on the owner and the lease counter, so a worker
//! that lost a lease can never move its checkpoint.
