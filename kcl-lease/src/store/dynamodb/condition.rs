//! The conditions the store's writes depend on, as DynamoDB condition
//! expressions built from the attribute names of [`item`](super::item):
//! the expectations beside the format they are about.
//!
//! Each condition reads an item the way the item reader does (an absent
//! attribute and a DynamoDB NULL are the same; see [`absent`]) and carries
//! exactly the expression values it uses, because DynamoDB refuses a
//! request that binds a value none of its expressions use, or uses one it
//! does not bind. Conditions combine with [`Condition::and`] and
//! [`Condition::or`].

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use kcl_checkpoint::ExtendedSequenceNumber;

use super::item::*;
use crate::{Lease, LeaseToken};

/// A condition expression and the values it uses. Every constructor
/// parenthesises an expression with an OR at its top, so that conditions
/// combine with [`and`](Self::and) as they read.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Condition {
    expression: String,
    values: HashMap<String, AttributeValue>,
}

impl Condition {
    /// A condition that uses the values `values`.
    fn new(
        expression: impl Into<String>,
        values: impl IntoIterator<Item = (String, AttributeValue)>,
    ) -> Self {
        Self {
            expression: expression.into(),
            values: values.into_iter().collect(),
        }
    }

    /// The attribute `name` equals `value`, bound as `placeholder`.
    fn equals(name: &str, placeholder: &str, value: AttributeValue) -> Self {
        Self::new(
            format!("{name} = {placeholder}"),
            [(placeholder.to_owned(), value)],
        )
    }

    /// Both conditions. (DynamoDB binds AND tighter than OR, and
    /// [`or`](Self::or) parenthesises, so no parentheses are needed here.)
    pub(super) fn and(self, other: Condition) -> Self {
        let expression = format!("{} AND {}", self.expression, other.expression);
        self.joined(expression, other)
    }

    /// Either condition, parenthesised.
    pub(super) fn or(self, other: Condition) -> Self {
        let expression = format!("({} OR {})", self.expression, other.expression);
        self.joined(expression, other)
    }

    /// `expression` with the values of both conditions. A value both use
    /// is the same in both: placeholders are named for what they hold
    /// (`:counter`, `:null_type`).
    fn joined(mut self, expression: String, other: Condition) -> Self {
        for (name, value) in other.values {
            let previous = self.values.insert(name, value.clone());
            // Placeholders are fixed names in this file: a clash is a bug
            // here, caught by the tests below, never data from outside.
            debug_assert!(
                previous.is_none_or(|previous| previous == value),
                "one placeholder bound to two values"
            );
        }
        self.expression = expression;
        self
    }

    /// The expression, and the values to bind for it.
    pub(super) fn into_parts(self) -> (String, HashMap<String, AttributeValue>) {
        (self.expression, self.values)
    }
}

/// The expression value naming DynamoDB's NULL type.
const NULL_TYPE: &str = ":null_type";

/// The attribute `name` holds nothing, as the item reader reads it: absent,
/// or DynamoDB NULL.
pub(super) fn absent(name: &str) -> Condition {
    Condition::new(
        format!("(attribute_not_exists({name}) OR attribute_type({name}, {NULL_TYPE}))"),
        [(NULL_TYPE.to_owned(), s("NULL"))],
    )
}

/// No item with this key exists yet.
pub(super) fn no_item() -> Condition {
    Condition::new(format!("attribute_not_exists({LEASE_KEY})"), [])
}

/// The item is a lease, as a scan sorts items
/// ([`classify_item`](super::item::classify_item)): an `entityType` that is
/// absent, not a string, or `LEASE`. Every write that depends on ownership
/// includes it, so no item a scan skips is ever written.
pub(super) fn is_lease() -> Condition {
    Condition::new(
        format!(
            "(attribute_not_exists({ENTITY_TYPE}) OR NOT attribute_type({ENTITY_TYPE}, \
             :string_type) OR {ENTITY_TYPE} = :lease_entity)"
        ),
        [
            (":string_type".to_owned(), s("S")),
            (":lease_entity".to_owned(), s(LEASE_ENTITY)),
        ],
    )
}

/// The lease counter is `counter`.
pub(super) fn counter_is(counter: u64) -> Condition {
    Condition::equals(LEASE_COUNTER, ":counter", n(counter))
}

/// The lease's owner is `worker`, bound as `placeholder`.
pub(super) fn owner_is(placeholder: &str, worker: &str) -> Condition {
    Condition::equals(LEASE_OWNER, placeholder, s(worker))
}

/// The lease is being handed over by `worker` (its `checkpointOwner`),
/// bound as `placeholder`.
pub(super) fn handed_over_by(placeholder: &str, worker: &str) -> Condition {
    Condition::equals(CHECKPOINT_OWNER, placeholder, s(worker))
}

/// `token` still processes the lease: the counter is the token's, and the
/// token's worker is the processing owner (the worker handing the lease
/// over during a handoff, otherwise the owner); and the item is a lease.
pub(super) fn held_by(token: &LeaseToken) -> Condition {
    counter_is(token.counter)
        .and(
            handed_over_by(":worker", &token.worker)
                .or(absent(CHECKPOINT_OWNER).and(owner_is(":worker", &token.worker))),
        )
        .and(is_lease())
}

/// The lease is still as `seen` in the fields that fence ownership (the
/// counter, the owner, the handoff marker), and is a lease.
pub(super) fn unchanged_since(seen: &Lease) -> Condition {
    let owner = match &seen.owner {
        Some(owner) => owner_is(":seen_owner", owner),
        None => absent(LEASE_OWNER),
    };
    let checkpoint_owner = match &seen.checkpoint_owner {
        Some(checkpoint_owner) => handed_over_by(":seen_checkpoint_owner", checkpoint_owner),
        None => absent(CHECKPOINT_OWNER),
    };
    Condition::equals(LEASE_COUNTER, ":seen_counter", n(seen.counter))
        .and(owner)
        .and(checkpoint_owner)
        .and(is_lease())
}

/// The position stored in the attributes `name` and `sub_name` is
/// `position` (`None`: no position), as the item reader reads it: an
/// absent or NULL sub-sequence number is 0, and an absent, NULL or empty
/// string is no position. Its values are named after `placeholder`.
pub(super) fn stored_position_is(
    name: &str,
    sub_name: &str,
    placeholder: &str,
    position: Option<&ExtendedSequenceNumber>,
) -> Condition {
    let null = format!("{placeholder}_null");
    let Some(position) = position else {
        let empty = format!("{placeholder}_empty");
        return Condition::new(
            format!(
                "(attribute_not_exists({name}) OR attribute_type({name}, {null}) OR {name} = {empty})"
            ),
            [(null, s("NULL")), (empty, s(""))],
        );
    };
    let sub = format!("{placeholder}_sub");
    let sequence = Condition::equals(name, placeholder, s(position.checkpoint_str()));
    let sub_is = Condition::equals(sub_name, &sub, n(position.sub_sequence_number()));
    if position.sub_sequence_number() == 0 {
        let sub_absent = Condition::new(
            format!("(attribute_not_exists({sub_name}) OR attribute_type({sub_name}, {null}))"),
            [(null, s("NULL"))],
        );
        sequence.and(sub_is.or(sub_absent))
    } else {
        sequence.and(sub_is)
    }
}

/// The item is a lease that can be deleted: absent already, or read as a
/// lease (the types the reader relies on, and [`is_lease`]) with the
/// counter `counter`.
pub(super) fn deletable(counter: u64) -> Condition {
    let number_type = || [(":number_type".to_owned(), s("N"))];
    let readable = Condition::new(
        format!("attribute_type({CHECKPOINT}, :string_type)"),
        [(":string_type".to_owned(), s("S"))],
    )
    .and(Condition::new(
        format!("attribute_type({LEASE_COUNTER}, :number_type)"),
        number_type(),
    ))
    .and(Condition::new(
        format!("attribute_type({OWNER_SWITCHES}, :number_type)"),
        number_type(),
    ))
    .and(is_lease())
    .and(counter_is(counter));
    Condition::new(format!("attribute_not_exists({LEASE_KEY})"), []).or(Condition::new(
        format!("({})", readable.expression),
        readable.values,
    ))
}

/// A heartbeat write moves the stored value forward: none is stored, or a
/// lower one.
pub(super) fn heartbeat_below(beat: u64) -> Condition {
    Condition::new(
        format!("(attribute_not_exists({HEARTBEAT}) OR {HEARTBEAT} < :beat)"),
        [(":beat".to_owned(), n(beat))],
    )
}

/// The worker has a heartbeat item.
pub(super) fn heartbeat_exists() -> Condition {
    Condition::new(format!("attribute_exists({HEARTBEAT})"), [])
}

/// The stored heartbeat is still `beat`.
pub(super) fn heartbeat_is(beat: u64) -> Condition {
    Condition::equals(HEARTBEAT, ":beat", n(beat))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The `:name` placeholders an expression uses.
    fn placeholders(expression: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut rest = expression;
        while let Some(at) = rest.find(':') {
            let name: String = rest[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(format!(":{name}"));
            rest = &rest[at + 1 + name.len()..];
        }
        found
    }

    /// Whether `expression` has an OR outside every parenthesis: it would
    /// not read as meant once another condition is AND-ed to it.
    fn or_at_top(expression: &str) -> bool {
        let mut depth = 0i32;
        let bytes = expression.as_bytes();
        for (at, byte) in bytes.iter().enumerate() {
            match byte {
                b'(' => depth += 1,
                b')' => depth -= 1,
                _ if depth == 0 && expression[at..].starts_with(" OR ") => return true,
                _ => {}
            }
        }
        false
    }

    /// DynamoDB refuses a request that binds a value its expressions do
    /// not use, or uses one it does not bind; and every condition combines
    /// as it reads.
    fn assert_binds_what_it_uses(condition: Condition) {
        let (expression, values) = condition.into_parts();
        assert!(!or_at_top(&expression), "unparenthesised OR: {expression}");
        let bound: BTreeSet<String> = values.into_keys().collect();
        assert_eq!(placeholders(&expression), bound, "{expression}");
    }

    fn lease(owner: Option<&str>, checkpoint_owner: Option<&str>) -> Lease {
        let mut lease = Lease::new("shardId-1", ExtendedSequenceNumber::TrimHorizon);
        lease.owner = owner.map(str::to_owned);
        lease.checkpoint_owner = checkpoint_owner.map(str::to_owned);
        lease
    }

    #[test]
    fn every_condition_binds_exactly_the_values_it_uses() {
        for owner in [None, Some("worker-a")] {
            for checkpoint_owner in [None, Some("worker-b")] {
                assert_binds_what_it_uses(unchanged_since(&lease(owner, checkpoint_owner)));
            }
        }
        let positions = [
            None,
            Some(ExtendedSequenceNumber::TrimHorizon),
            Some(ExtendedSequenceNumber::record("100", 0).unwrap()),
            Some(ExtendedSequenceNumber::record("100", 3).unwrap()),
        ];
        for position in &positions {
            assert_binds_what_it_uses(stored_position_is(
                CHECKPOINT,
                CHECKPOINT_SUB_SEQUENCE,
                ":previous",
                position.as_ref(),
            ));
        }
        let token = LeaseToken {
            key: "shardId-1".into(),
            worker: "worker-a".into(),
            counter: 7,
        };
        assert_binds_what_it_uses(held_by(&token));
        assert_binds_what_it_uses(no_item());
        assert_binds_what_it_uses(is_lease());
        assert_binds_what_it_uses(absent(CHECKPOINT_OWNER));
        assert!(or_at_top("a = :a OR b = :b"), "the check itself");
        assert_binds_what_it_uses(deletable(7));
        assert_binds_what_it_uses(heartbeat_below(3));
        assert_binds_what_it_uses(heartbeat_is(3));
        assert_binds_what_it_uses(heartbeat_exists());
    }

    /// The expressions as DynamoDB reads them: AND binds tighter than OR,
    /// so every OR inside an AND is parenthesised.
    #[test]
    fn conditions_read_as_their_attribute_names_say() {
        let token = LeaseToken {
            key: "shardId-1".into(),
            worker: "worker-a".into(),
            counter: 7,
        };
        assert_eq!(
            held_by(&token).into_parts().0,
            "leaseCounter = :counter AND (checkpointOwner = :worker OR \
             (attribute_not_exists(checkpointOwner) OR attribute_type(checkpointOwner, :null_type)) \
             AND leaseOwner = :worker) AND (attribute_not_exists(entityType) OR \
             NOT attribute_type(entityType, :string_type) OR entityType = :lease_entity)"
        );
        assert_eq!(
            unchanged_since(&lease(Some("worker-a"), None))
                .into_parts()
                .0,
            "leaseCounter = :seen_counter AND leaseOwner = :seen_owner AND \
             (attribute_not_exists(checkpointOwner) OR attribute_type(checkpointOwner, :null_type)) \
             AND (attribute_not_exists(entityType) OR NOT attribute_type(entityType, :string_type) \
             OR entityType = :lease_entity)"
        );
        assert_eq!(
            stored_position_is(
                CHECKPOINT,
                CHECKPOINT_SUB_SEQUENCE,
                ":previous",
                Some(&ExtendedSequenceNumber::record("100", 0).unwrap()),
            )
            .into_parts()
            .0,
            "checkpoint = :previous AND (checkpointSubSequenceNumber = :previous_sub OR \
             (attribute_not_exists(checkpointSubSequenceNumber) OR \
             attribute_type(checkpointSubSequenceNumber, :previous_null)))"
        );
    }
}
