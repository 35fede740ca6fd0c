//! Random power-loss workloads on the simulator, checked against a model.
//!
//! Every case is deterministic from its seed. A failure prints the seed;
//! add it to `REGRESSION_SEEDS` to keep it fixed forever.
//!
//! `AGENTWAL_CRASH_STATES` sets how many crash states the sweep covers
//! (default 10 000), `AGENTWAL_CRASH_SEED` the first seed (default 0).

use agentwal::log::fuzzing::{crash_case, torn_sector_case};

/// Seeds that once failed. One line each.
const REGRESSION_SEEDS: &[u64] = &[18441984287589072384];

/// Rounds per case: each round is one crash state (two when power also
/// fails during recovery).
const ROUNDS: u64 = 16;

/// Number of parallel sweep tests (the harness runs them on all cores).
const SHARDS: u64 = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn sweep(shard: u64) {
    let total = env_u64("AGENTWAL_CRASH_STATES", 10_000);
    let base = env_u64("AGENTWAL_CRASH_SEED", 0);
    let target = total.div_ceil(SHARDS);
    let (mut states, mut faults, mut cases, mut appended) = (0u64, 0u64, 0u64, 0u64);
    let mut seed = base.wrapping_add(shard);
    while states < target {
        match crash_case(seed, ROUNDS) {
            Ok(s) => {
                states += s.crash_states;
                faults += s.faults;
                appended += s.appended;
            }
            Err(msg) => panic!(
                "crash case failed: {msg}\nreplay with: AGENTWAL_CRASH_SEED={seed} \
                 AGENTWAL_CRASH_STATES=1 cargo test --test crash_power_loss, \
                 or add {seed} to REGRESSION_SEEDS"
            ),
        }
        cases += 1;
        seed = seed.wrapping_add(SHARDS);
    }
    eprintln!(
        "shard {shard}: {cases} cases, {states} crash states, {faults} injected faults seen, {appended} records"
    );
    assert!(states >= target);
}

#[test]
fn regression_seeds() {
    for &seed in REGRESSION_SEEDS {
        if let Err(msg) = crash_case(seed, ROUNDS) {
            panic!("regression seed {seed}: {msg}");
        }
    }
}

#[test]
fn sweep_shard_0() {
    sweep(0);
}

#[test]
fn sweep_shard_1() {
    sweep(1);
}

#[test]
fn sweep_shard_2() {
    sweep(2);
}

#[test]
fn sweep_shard_3() {
    sweep(3);
}

/// Power loss that tears whole 4 KiB blocks, damaging synced bytes that
/// share a block with an unsynced write: the weaker promises of
/// `docs/recovery.md` ("Torn sectors") hold for every seed.
#[test]
fn torn_4k_sectors_never_yield_wrong_data_and_fail_only_with_typed_errors() {
    let n = env_u64("AGENTWAL_CRASH_STATES", 10_000) / 10;
    let base = env_u64("AGENTWAL_CRASH_SEED", 0);
    for seed in base..base + n.max(1) {
        if let Err(msg) = torn_sector_case(seed) {
            panic!("{msg}\nreplay with: AGENTWAL_CRASH_SEED={seed} AGENTWAL_CRASH_STATES=10");
        }
    }
}
