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
    /// checkpoint that this leaves at or behind the checkpoint has been
    /// passed already and is dropped with its state; otherwise the pending
    /// fields are kept as they are.
    pub fn on_top_of(&self, stored: &ExtendedSequenceNumber) -> Self {
        if self.checkpoint >= *stored {
            return self.clone();
        }
        let passed = self
            .pending_checkpoint
            .as_ref()
            .is_some_and(|pending| pending <= stored);
        if passed {
            return Self::at(stored.clone());
        }
        Self {
            checkpoint: stored.clone(),
            ..self.clone()
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
        for pending in ["120", "150"] {
            assert_eq!(
                prepared("100", pending).on_top_of(&at("150")),
                CheckpointUpdate::at(at("150"))
            );
        }
        assert_eq!(
            prepared("100", "120").on_top_of(&ExtendedSequenceNumber::ShardEnd),
            CheckpointUpdate::at(ExtendedSequenceNumber::ShardEnd)
        );
    }
}
