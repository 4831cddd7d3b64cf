//! Which checkpoint positions are allowed: a pure decision, apart from any
//! I/O.

use crate::ExtendedSequenceNumber;

/// Why a checkpoint position was refused. Nothing was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCheckpoint {
    /// The position is behind the shard's last checkpoint (the last one the
    /// processor asked for and was answered, or the one it resumed from):
    /// checkpoints never move backwards.
    #[error("checkpoint {requested} is behind the last checkpoint {last}")]
    BehindLastCheckpoint {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
        /// The shard's last checkpoint.
        last: ExtendedSequenceNumber,
    },
    /// The position is past the last record delivered to the processor: a
    /// crash would then skip records that were never processed.
    #[error(
        "checkpoint {requested} is past the last record delivered ({last_delivered}); \
         checkpoint only records the processor has been given"
    )]
    PastLastDelivered {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
        /// The furthest position delivered so far.
        last_delivered: ExtendedSequenceNumber,
    },
    /// The position is a sentinel other than `SHARD_END` (which the
    /// checkpointer writes itself at shard end).
    #[error("{requested} is not a record position; checkpoint a sequence number")]
    NotARecord {
        /// The position asked for.
        requested: ExtendedSequenceNumber,
    },
}

/// Checks a checkpoint at `requested`, given the shard's `last` checkpoint
/// and the furthest position `last_delivered` to the processor (`SHARD_END`
/// once the shard's end has been delivered).
///
/// Allowed: record positions (and `SHARD_END`) that are not behind `last`
/// and not past `last_delivered`. Checkpointing the same position again is
/// allowed and harmless.
pub fn validate_checkpoint(
    requested: &ExtendedSequenceNumber,
    last: &ExtendedSequenceNumber,
    last_delivered: &ExtendedSequenceNumber,
) -> Result<(), InvalidCheckpoint> {
    if requested.is_sentinel() && *requested != ExtendedSequenceNumber::ShardEnd {
        return Err(InvalidCheckpoint::NotARecord {
            requested: requested.clone(),
        });
    }
    if requested < last {
        return Err(InvalidCheckpoint::BehindLastCheckpoint {
            requested: requested.clone(),
            last: last.clone(),
        });
    }
    if requested > last_delivered {
        return Err(InvalidCheckpoint::PastLastDelivered {
            requested: requested.clone(),
            last_delivered: last_delivered.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: &str, sub: u64) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, sub).unwrap()
    }

    #[test]
    fn a_position_between_last_checkpoint_and_last_delivered_is_allowed() {
        let last = at("100", 0);
        let delivered = at("300", 0);
        for ok in [at("100", 0), at("200", 0), at("300", 0), at("100", 5)] {
            assert_eq!(validate_checkpoint(&ok, &last, &delivered), Ok(()), "{ok}");
        }
        let trim = ExtendedSequenceNumber::TrimHorizon;
        assert_eq!(validate_checkpoint(&at("5", 0), &trim, &delivered), Ok(()));
    }

    #[test]
    fn backwards_is_refused() {
        let result = validate_checkpoint(&at("99", 0), &at("100", 0), &at("300", 0));
        assert!(matches!(
            result,
            Err(InvalidCheckpoint::BehindLastCheckpoint { .. })
        ));
        let result = validate_checkpoint(&at("100", 1), &at("100", 2), &at("300", 0));
        assert!(matches!(
            result,
            Err(InvalidCheckpoint::BehindLastCheckpoint { .. })
        ));
    }

    #[test]
    fn past_the_last_delivered_record_is_refused() {
        let result = validate_checkpoint(&at("301", 0), &at("100", 0), &at("300", 0));
        assert!(matches!(
            result,
            Err(InvalidCheckpoint::PastLastDelivered { .. })
        ));
        let result = validate_checkpoint(&at("300", 1), &at("100", 0), &at("300", 0));
        assert!(matches!(
            result,
            Err(InvalidCheckpoint::PastLastDelivered { .. })
        ));
        // Nothing delivered yet: nothing can be checkpointed.
        let trim = ExtendedSequenceNumber::TrimHorizon;
        assert!(validate_checkpoint(&at("1", 0), &trim, &trim).is_err());
    }

    #[test]
    fn shard_end_only_once_delivered() {
        let end = ExtendedSequenceNumber::ShardEnd;
        assert!(validate_checkpoint(&end, &at("1", 0), &at("300", 0)).is_err());
        assert_eq!(validate_checkpoint(&end, &at("1", 0), &end), Ok(()));
    }

    #[test]
    fn sentinels_other_than_shard_end_are_refused() {
        for sentinel in [
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            ExtendedSequenceNumber::AtTimestamp,
        ] {
            assert!(matches!(
                validate_checkpoint(&sentinel, &sentinel, &at("3", 0)),
                Err(InvalidCheckpoint::NotARecord { .. })
            ));
        }
    }
}
