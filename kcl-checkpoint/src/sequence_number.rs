//! Kinesis sequence numbers, extended with the KPL sub-sequence number, and the
//! sentinel positions a checkpoint can hold.
//!
//! Kinesis hands out sequence numbers as decimal strings. The API allows up to
//! 129 digits (pattern `0|([1-9]\d{0,128})`), and the numbers seen today are 56
//! digits long, about 185 bits: more than any machine integer. They are kept
//! here as their digits and compared numerically (a longer number is larger;
//! equal lengths compare digit by digit), never as plain strings.
//!
//! The ordering is the Java KCL's, so checkpoints written by either library
//! compare the same way:
//!
//! `AT_TIMESTAMP < TRIM_HORIZON < LATEST < every sequence number < SHARD_END`
//!
//! and two positions with the same sequence number are ordered by their
//! sub-sequence numbers.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The most digits a Kinesis sequence number can have (API pattern
/// `0|([1-9]\d{0,128})`).
pub const MAX_SEQUENCE_NUMBER_DIGITS: usize = 129;

/// Why a string is not a valid sequence number or checkpoint position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceNumberError {
    /// The string is empty.
    #[error(
        "empty sequence number: expected decimal digits or one of TRIM_HORIZON, LATEST, AT_TIMESTAMP, SHARD_END"
    )]
    Empty,
    /// The string holds something other than decimal digits and is not a sentinel.
    #[error(
        "invalid sequence number {0:?}: expected decimal digits or one of TRIM_HORIZON, LATEST, AT_TIMESTAMP, SHARD_END"
    )]
    NotDecimal(String),
    /// Kinesis never writes leading zeros, so a number with them did not come
    /// from Kinesis and would not round-trip.
    #[error(
        "invalid sequence number {0:?}: leading zeros are not allowed (Kinesis never writes them)"
    )]
    LeadingZero(String),
    /// More digits than the Kinesis API allows.
    #[error(
        "invalid sequence number: {digits} digits, more than the {MAX_SEQUENCE_NUMBER_DIGITS} Kinesis allows"
    )]
    TooLong {
        /// How many digits the rejected string has.
        digits: usize,
    },
    /// The sub-sequence part is not a non-negative integer that fits in 64 bits.
    #[error("invalid sub-sequence number {0:?}: expected a non-negative integer below 2^63")]
    InvalidSubSequence(String),
    /// A sentinel position was given a non-zero sub-sequence number.
    #[error("{sentinel} cannot carry a sub-sequence number (got {sub_sequence})")]
    SentinelWithSubSequence {
        /// The sentinel's name as stored in the lease table.
        sentinel: &'static str,
        /// The sub-sequence number that was given with it.
        sub_sequence: u64,
    },
}

/// A Kinesis record's sequence number: a validated string of decimal digits,
/// ordered numerically.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Box<str>);

impl SequenceNumber {
    /// Validates `digits` as a Kinesis sequence number.
    ///
    /// Accepts what the Kinesis API may return: `0`, or up to 129 decimal
    /// digits without leading zeros.
    pub fn new(digits: &str) -> Result<Self, SequenceNumberError> {
        if digits.is_empty() {
            return Err(SequenceNumberError::Empty);
        }
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SequenceNumberError::NotDecimal(digits.to_owned()));
        }
        if digits.len() > 1 && digits.starts_with('0') {
            return Err(SequenceNumberError::LeadingZero(digits.to_owned()));
        }
        if digits.len() > MAX_SEQUENCE_NUMBER_DIGITS {
            return Err(SequenceNumberError::TooLong {
                digits: digits.len(),
            });
        }
        Ok(Self(digits.into()))
    }

    /// The decimal digits, exactly as Kinesis wrote them.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        // Without leading zeros, a longer number is a larger one; numbers of
        // the same length compare digit by digit.
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SequenceNumber {
    type Err = SequenceNumberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A position in a shard: a record (sequence number plus the sub-sequence
/// number of a user record inside a KPL aggregate) or one of the sentinels.
///
/// Variants are declared in their order, so the derived ordering is the Java
/// KCL's: `AtTimestamp < TrimHorizon < Latest < Record{..} < ShardEnd`, with
/// records ordered by sequence number and then sub-sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExtendedSequenceNumber {
    /// Start from a timestamp given elsewhere (the configured initial position).
    AtTimestamp,
    /// Start from the oldest record still in the shard.
    TrimHorizon,
    /// Start after the newest record in the shard at the time reading starts.
    Latest,
    /// A record, or a user record inside a KPL aggregate.
    Record {
        /// The Kinesis record's sequence number.
        sequence: SequenceNumber,
        /// The user record's index inside its KPL aggregate; 0 for records
        /// that are not aggregated.
        sub_sequence: u64,
    },
    /// The shard has been read to its end and its child shards may start.
    ShardEnd,
}

impl ExtendedSequenceNumber {
    /// The lease-table string for `AT_TIMESTAMP`.
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    /// The lease-table string for `TRIM_HORIZON`.
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    /// The lease-table string for `LATEST`.
    pub const LATEST: &'static str = "LATEST";
    /// The lease-table string for `SHARD_END`.
    pub const SHARD_END: &'static str = "SHARD_END";

    /// A position at a record, validating its sequence number.
    pub fn record(sequence: &str, sub_sequence: u64) -> Result<Self, SequenceNumberError> {
        check_sub_sequence(sub_sequence)?;
        Ok(Self::Record {
            sequence: SequenceNumber::new(sequence)?,
            sub_sequence,
        })
    }

    /// Reads a position as the Java KCL stores it in the lease table: the
    /// `checkpoint` string attribute (digits or a sentinel name) and the
    /// `checkpointSubSequenceNumber` number attribute (absent means 0).
    ///
    /// A sentinel with a non-zero sub-sequence number is rejected: neither
    /// library writes one.
    pub fn from_lease_attributes(
        checkpoint: &str,
        sub_sequence: Option<u64>,
    ) -> Result<Self, SequenceNumberError> {
        let sub_sequence = sub_sequence.unwrap_or(0);
        let (sentinel, name) = match checkpoint {
            Self::AT_TIMESTAMP => (Self::AtTimestamp, Self::AT_TIMESTAMP),
            Self::TRIM_HORIZON => (Self::TrimHorizon, Self::TRIM_HORIZON),
            Self::LATEST => (Self::Latest, Self::LATEST),
            Self::SHARD_END => (Self::ShardEnd, Self::SHARD_END),
            digits => return Self::record(digits, sub_sequence),
        };
        if sub_sequence != 0 {
            return Err(SequenceNumberError::SentinelWithSubSequence {
                sentinel: name,
                sub_sequence,
            });
        }
        Ok(sentinel)
    }

    /// The `checkpoint` attribute as the Java KCL stores it: the sequence
    /// number's digits, or the sentinel's name.
    pub fn checkpoint_str(&self) -> &str {
        match self {
            Self::AtTimestamp => Self::AT_TIMESTAMP,
            Self::TrimHorizon => Self::TRIM_HORIZON,
            Self::Latest => Self::LATEST,
            Self::Record { sequence, .. } => sequence.as_str(),
            Self::ShardEnd => Self::SHARD_END,
        }
    }

    /// The `checkpointSubSequenceNumber` attribute: the sub-sequence number
    /// of a record, 0 for a sentinel.
    pub fn sub_sequence_number(&self) -> u64 {
        match self {
            Self::Record { sub_sequence, .. } => *sub_sequence,
            _ => 0,
        }
    }

    /// The record's sequence number, or `None` for a sentinel.
    pub fn sequence_number(&self) -> Option<&SequenceNumber> {
        match self {
            Self::Record { sequence, .. } => Some(sequence),
            _ => None,
        }
    }

    /// Whether this is one of the sentinels rather than a record position.
    pub fn is_sentinel(&self) -> bool {
        !matches!(self, Self::Record { .. })
    }
}

/// Sub-sequence numbers are Java `long`s in the lease table; anything at or
/// above 2^63 could not be read back by a Java KCL worker.
fn check_sub_sequence(sub_sequence: u64) -> Result<(), SequenceNumberError> {
    if sub_sequence > i64::MAX as u64 {
        return Err(SequenceNumberError::InvalidSubSequence(
            sub_sequence.to_string(),
        ));
    }
    Ok(())
}

/// Formats a sentinel as its name, a record as its sequence number, followed
/// by `/` and the sub-sequence number when that is not 0. [`FromStr`] reads
/// the same form back.
impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Record {
                sequence,
                sub_sequence: 0,
            } => write!(f, "{sequence}"),
            Self::Record {
                sequence,
                sub_sequence,
            } => write!(f, "{sequence}/{sub_sequence}"),
            sentinel => f.write_str(sentinel.checkpoint_str()),
        }
    }
}

/// Parses `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`, `DIGITS` or
/// `DIGITS/SUB_SEQUENCE`.
impl FromStr for ExtendedSequenceNumber {
    type Err = SequenceNumberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            None => Self::from_lease_attributes(s, None),
            Some((sequence, sub)) => {
                let sub_sequence = sub
                    .parse::<u64>()
                    .ok()
                    .filter(|_| sub.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| SequenceNumberError::InvalidSubSequence(sub.to_owned()))?;
                Self::from_lease_attributes(sequence, Some(sub_sequence))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigUint;
    use proptest::prelude::*;

    /// A sequence number as Kinesis writes them today (56 digits).
    const REAL: &str = "49590338271490256608559692538361571095921575989136588898";

    fn rec(sequence: &str, sub_sequence: u64) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::record(sequence, sub_sequence).unwrap()
    }

    #[test]
    fn sentinels_and_records_are_ordered_as_the_java_kcl_orders_them() {
        let ordered = [
            ExtendedSequenceNumber::AtTimestamp,
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            rec("0", 0),
            rec("0", 1),
            rec("9", 0),
            rec("10", 0),
            rec(REAL, 0),
            rec(REAL, 7),
            ExtendedSequenceNumber::ShardEnd,
        ];
        for (i, a) in ordered.iter().enumerate() {
            for (j, b) in ordered.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn numbers_compare_numerically_not_as_strings() {
        // As strings "9" > "10" and "2..." > "1...(longer)"; numerically not.
        assert!(rec("9", 0) < rec("10", 0));
        assert!(rec("2", 0) < rec(REAL, 0));
    }

    #[test]
    fn reads_the_lease_table_attributes_the_java_kcl_writes() {
        let position = ExtendedSequenceNumber::from_lease_attributes(REAL, Some(0)).unwrap();
        assert_eq!(position, rec(REAL, 0));
        assert_eq!(position.checkpoint_str(), REAL);
        assert_eq!(position.sub_sequence_number(), 0);

        for (name, sentinel) in [
            ("TRIM_HORIZON", ExtendedSequenceNumber::TrimHorizon),
            ("LATEST", ExtendedSequenceNumber::Latest),
            ("AT_TIMESTAMP", ExtendedSequenceNumber::AtTimestamp),
            ("SHARD_END", ExtendedSequenceNumber::ShardEnd),
        ] {
            let parsed = ExtendedSequenceNumber::from_lease_attributes(name, Some(0)).unwrap();
            assert_eq!(parsed, sentinel);
            assert_eq!(parsed.checkpoint_str(), name);
            assert_eq!(parsed.sub_sequence_number(), 0);
            assert!(parsed.is_sentinel());
        }
        // An absent sub-sequence attribute means 0.
        assert_eq!(
            ExtendedSequenceNumber::from_lease_attributes("12", None).unwrap(),
            rec("12", 0)
        );
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        use SequenceNumberError::*;
        let parse = |s: &str| s.parse::<ExtendedSequenceNumber>().unwrap_err();
        assert_eq!(parse(""), Empty);
        assert_eq!(parse("trim_horizon"), NotDecimal("trim_horizon".into()));
        assert_eq!(parse("-5"), NotDecimal("-5".into()));
        assert_eq!(parse("12a"), NotDecimal("12a".into()));
        assert_eq!(parse(" 12"), NotDecimal(" 12".into()));
        assert_eq!(parse("007"), LeadingZero("007".into()));
        assert_eq!(parse(&"1".repeat(130)), TooLong { digits: 130 });
        assert_eq!(parse("12/x"), InvalidSubSequence("x".into()));
        assert_eq!(parse("12/+1"), InvalidSubSequence("+1".into()));
        assert_eq!(parse("12/"), InvalidSubSequence("".into()));
        assert_eq!(
            parse("12/9223372036854775808"),
            InvalidSubSequence("9223372036854775808".into())
        );
        assert_eq!(
            parse("SHARD_END/3"),
            SentinelWithSubSequence {
                sentinel: "SHARD_END",
                sub_sequence: 3
            }
        );
        // The error message names what was expected.
        assert!(parse("abc").to_string().contains("TRIM_HORIZON"));
        // The longest number Kinesis allows is accepted.
        assert!(SequenceNumber::new(&"9".repeat(129)).is_ok());
    }

    #[test]
    fn display_is_readable_and_parses_back() {
        assert_eq!(rec(REAL, 0).to_string(), REAL);
        assert_eq!(rec(REAL, 3).to_string(), format!("{REAL}/3"));
        assert_eq!(ExtendedSequenceNumber::ShardEnd.to_string(), "SHARD_END");
        assert_eq!(
            format!("{REAL}/3")
                .parse::<ExtendedSequenceNumber>()
                .unwrap(),
            rec(REAL, 3)
        );
    }

    /// Any valid sequence number: `0`, or 1..=129 digits with no leading zero.
    fn sequence_digits() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_owned()),
            "[1-9][0-9]{0,128}",
            // Many pairs of the same length, where the digit-by-digit rule matters.
            "[1-9][0-9]{55}",
        ]
    }

    fn position() -> impl Strategy<Value = ExtendedSequenceNumber> {
        prop_oneof![
            Just(ExtendedSequenceNumber::AtTimestamp),
            Just(ExtendedSequenceNumber::TrimHorizon),
            Just(ExtendedSequenceNumber::Latest),
            Just(ExtendedSequenceNumber::ShardEnd),
            (sequence_digits(), 0..=i64::MAX as u64).prop_map(|(s, sub)| rec(&s, sub)),
            (sequence_digits(), 0..3u64).prop_map(|(s, sub)| rec(&s, sub)),
        ]
    }

    proptest! {
        #[test]
        fn sequence_order_matches_numeric_order(a in sequence_digits(), b in sequence_digits()) {
            let numeric = a.parse::<BigUint>().unwrap().cmp(&b.parse::<BigUint>().unwrap());
            prop_assert_eq!(SequenceNumber::new(&a).unwrap().cmp(&SequenceNumber::new(&b).unwrap()), numeric);
        }

        #[test]
        fn record_order_is_sequence_then_sub_sequence(
            a in sequence_digits(), b in sequence_digits(), x in 0..4u64, y in 0..4u64,
        ) {
            let numeric = a.parse::<BigUint>().unwrap().cmp(&b.parse::<BigUint>().unwrap());
            prop_assert_eq!(rec(&a, x).cmp(&rec(&b, y)), numeric.then(x.cmp(&y)));
        }

        #[test]
        fn display_round_trips(p in position()) {
            prop_assert_eq!(p.to_string().parse::<ExtendedSequenceNumber>().unwrap(), p);
        }

        #[test]
        fn lease_attributes_round_trip(p in position()) {
            let back = ExtendedSequenceNumber::from_lease_attributes(
                p.checkpoint_str(),
                Some(p.sub_sequence_number()),
            ).unwrap();
            prop_assert_eq!(back, p);
        }

        #[test]
        fn ordering_is_total_and_consistent_with_equality(a in position(), b in position()) {
            prop_assert_eq!(a.cmp(&b), b.cmp(&a).reverse());
            prop_assert_eq!(a.cmp(&b) == Ordering::Equal, a == b);
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}") {
            let _ = s.parse::<ExtendedSequenceNumber>();
        }
    }
}
