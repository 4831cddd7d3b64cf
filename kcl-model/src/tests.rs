//! The model checks that `scripts/test.sh` runs: the protocol as built
//! keeps every property, and each rule removed is caught.

use super::*;

fn assert_kept(config: Config, wanted_examples: &[&str]) {
    let outcome = check(config.clone(), 2, false);
    println!(
        "{config:?}: {} states ({} distinct)",
        outcome.states, outcome.unique_states
    );
    for (property, steps) in &outcome.failures {
        println!("\n{property} broken:");
        for (now, action) in steps {
            println!("  t={now} {action:?}");
        }
    }
    assert!(outcome.failures.is_empty(), "{:#?}", outcome.failures);
    for example in wanted_examples {
        assert!(
            outcome.examples.contains(example),
            "never reached \"{example}\": the check would be vacuous"
        );
    }
}

#[test]
fn the_protocol_keeps_every_safety_property_through_any_one_event() {
    assert_kept(
        Config::one_event(),
        &[properties::SOME_HANDOFF, properties::SOME_FAILOVER],
    );
}

#[test]
fn the_protocol_keeps_every_safety_property_through_any_two_events() {
    assert_kept(Config::two_events(), &[properties::SOME_FAILOVER]);
}

#[test]
fn without_faults_every_handoff_completes_and_every_shard_is_processed() {
    assert_kept(Config::liveness(), &[properties::SOME_HANDOFF]);
}

#[test]
fn removing_any_rule_is_caught_with_a_counterexample() {
    for variant in Variant::BROKEN {
        let outcome = check(Config::hunt().with(variant), 2, true);
        let Some((property, steps)) = outcome.failures.first() else {
            panic!(
                "{variant:?}: no counterexample in {} states",
                outcome.states
            );
        };
        println!("\n{variant:?} breaks \"{property}\":");
        for (now, action) in steps {
            println!("  t={now} {action:?}");
        }
        let expected = match variant {
            Variant::UnfencedCheckpoints => properties::CHECKPOINT_MONOTONE,
            _ => properties::EXCLUSIVE,
        };
        assert_eq!(*property, expected, "{variant:?}");
    }
}
