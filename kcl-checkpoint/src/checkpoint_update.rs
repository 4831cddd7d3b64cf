//! What a checkpoint writes.

use crate::ExtendedSequenceNumber;

/// A checkpoint write: the new position, and the pending (prepared)
/// checkpoint with its state, which a plain checkpoint clears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointUpdate {
    /// The position processing has reached.
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared checkpoint not yet committed, if any.
    pub pending_checkpoint: Option<ExtendedSequenceNumber>,
    /// Application state stored with the pending checkpoint.
    pub pending_checkpoint_state: Option<Vec<u8>>,
}

impl CheckpointUpdate {
    /// A plain checkpoint at `position`, clearing any pending checkpoint.
    pub fn at(position: ExtendedSequenceNumber) -> Self {
        Self {
            checkpoint: position,
            pending_checkpoint: None,
            pending_checkpoint_state: None,
        }
    }
}

impl CheckpointUpdate {
    /// What to store when `stored` is the checkpoint already in place: a
    /// checkpoint never moves back, so one behind `stored` becomes `stored`
    /// (a write whose answer was lost got there first). A pending
    /// checkpoint behind the resulting checkpoint has been passed already
    /// and is dropped with its state; otherwise the pending fields are kept
    /// as they are.
    pub fn on_top_of(&self, stored: &ExtendedSequenceNumber) -> Self {
        let checkpoint = self.checkpoint.clone().max(stored.clone());
        match &self.pending_checkpoint {
            Some(pending) if *pending < checkpoint => Self::at(checkpoint),
            _ => Self {
                checkpoint,
                ..self.clone()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: &str) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(seq, 0).unwrap()
    }

    fn prepared(checkpoint: &str, pending: &str) -> CheckpointUpdate {
        CheckpointUpdate {
            checkpoint: at(checkpoint),
            pending_checkpoint: Some(at(pending)),
            pending_checkpoint_state: Some(b"state".to_vec()),
        }
    }

    #[test]
    fn an_update_at_or_past_the_stored_checkpoint_is_stored_as_it_is() {
        for update in [
            CheckpointUpdate::at(at("200")),
            prepared("100", "150"),
            prepared("100", "100"),
        ] {
            assert_eq!(update.on_top_of(&at("100")), update);
            assert_eq!(
                update.on_top_of(&ExtendedSequenceNumber::TrimHorizon),
                update
            );
        }
    }

    #[test]
    fn a_checkpoint_behind_the_stored_one_is_replaced_by_it() {
        assert_eq!(
            CheckpointUpdate::at(at("100")).on_top_of(&at("150")),
            CheckpointUpdate::at(at("150"))
        );
        assert_eq!(
            prepared("100", "200").on_top_of(&at("150")),
            CheckpointUpdate {
                checkpoint: at("150"),
                ..prepared("100", "200")
            }
        );
    }

    #[test]
    fn a_pending_checkpoint_already_passed_is_dropped_with_its_state() {
        assert_eq!(
            prepared("100", "120").on_top_of(&at("150")),
            CheckpointUpdate::at(at("150"))
        );
        // A pending checkpoint at the checkpoint is kept, whichever write
        // got there first.
        assert_eq!(
            prepared("100", "150").on_top_of(&at("150")),
            CheckpointUpdate {
                checkpoint: at("150"),
                ..prepared("100", "150")
            }
        );
        assert_eq!(
            prepared("100", "120").on_top_of(&ExtendedSequenceNumber::ShardEnd),
            CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd)
        );
        // Also when the update itself carries the later checkpoint (its
        // writer learned of it from an earlier answer).
        assert_eq!(
            prepared("150", "140").on_top_of(&at("150")),
            CheckpointUpdate::at(at("150"))
        );
        assert_eq!(
            prepared("150", "140").on_top_of(&at("100")),
            CheckpointUpdate::at(at("150"))
        );
    }
}
