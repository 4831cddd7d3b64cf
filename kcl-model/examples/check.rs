//! Checks the lease protocol model and prints what the checker found:
//!
//! ```sh
//! cargo run --release -p kcl-model --example check -- [variant] [config] [horizon=N] [adversary=N]
//! ```
//!
//! `variant` is `as-built` (the default) or one with a rule removed:
//! `no-margin`, `unfenced-checkpoints`, `beat-only-on-success`,
//! `no-gap-rule`, `judge-as-of-end`, `no-retake`,
//! `unconditional-heartbeat-removal`; `config` is `one-event` (the
//! default), `two-events`, `hunt` or `liveness`. A broken variant's search
//! stops at its first counterexample, printed step by step.

use std::time::Instant;

use kcl_model::{Config, Variant, check};

fn main() {
    let mut variant = Variant::AsBuilt;
    let mut config = Config::one_event();
    let mut changes = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "as-built" => variant = Variant::AsBuilt,
            "no-margin" => variant = Variant::NoMargin,
            "unfenced-checkpoints" => variant = Variant::UnfencedCheckpoints,
            "beat-only-on-success" => variant = Variant::BeatOnlyOnSuccess,
            "no-gap-rule" => variant = Variant::NoGapRule,
            "judge-as-of-end" => variant = Variant::JudgeAsOfEnd,
            "no-retake" => variant = Variant::NoRetake,
            "unconditional-heartbeat-removal" => variant = Variant::UnconditionalHeartbeatRemoval,
            "one-event" => config = Config::one_event(),
            "two-events" => config = Config::two_events(),
            "hunt" => config = Config::hunt(),
            "liveness" => config = Config::liveness(),
            other => changes.push(other.to_owned()),
        }
    }
    for change in changes {
        let parsed = change
            .split_once('=')
            .and_then(|(name, value)| Some((name, value.parse::<u8>().ok()?)));
        match parsed {
            Some(("horizon", n)) => config.horizon = n,
            Some(("adversary", n)) => config.adversary = n,
            Some(("stops", n)) => config.stops = n,
            _ => {
                eprintln!("check: unknown argument {change:?}");
                std::process::exit(2);
            }
        }
    }
    let config = config.with(variant);
    let started = Instant::now();
    let outcome = check(config.clone(), 2, variant != Variant::AsBuilt);
    println!(
        "{variant:?}, {} ticks, {} adversarial events, {} stops: {} states ({} distinct) in {:.1} s",
        config.horizon,
        config.adversary,
        config.stops,
        outcome.states,
        outcome.unique_states,
        started.elapsed().as_secs_f64()
    );
    println!("examples found: {:?}", outcome.examples);
    if outcome.failures.is_empty() {
        println!("every property holds");
    }
    for (property, steps) in outcome.failures {
        println!("\n\"{property}\" is broken after {} steps:", steps.len());
        for (now, action) in steps {
            println!("  t={now} {action:?}");
        }
    }
}
