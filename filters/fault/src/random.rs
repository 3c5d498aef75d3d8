//! The fault dice: a small, fast pseudo-random generator (SplitMix64).
//!
//! Each root context owns one generator. With `random_seed` configured it starts from that
//! seed, so a run is reproducible (every worker VM draws the same sequence); otherwise it is
//! seeded from the host's randomness (WASI `random_get`, which Envoy backs with its own random
//! source), once, so that a request costs no hostcall.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use wasmesh_sdk::random::SplitMix64;

/// The fault dice: [`SplitMix64`], plenty for deciding which requests get a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dice {
    rng: SplitMix64,
}

impl Dice {
    /// A generator starting from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Dice {
            rng: SplitMix64::seeded(seed),
        }
    }

    /// A generator seeded from the host's randomness.
    pub fn from_entropy() -> Self {
        Dice::seeded(entropy())
    }

    /// The next uniformly distributed `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

/// 64 random bits from the host: `RandomState`'s keys come from the OS (WASI `random_get` in
/// wasm32-wasip1), and hashing nothing with them yields a value derived from both keys.
pub fn entropy() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0x6661_756c_745f_7365);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_dice_are_reproducible() {
        let mut a = Dice::seeded(42);
        let mut b = Dice::seeded(42);
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(first[0], first[1]);
        assert_ne!(Dice::seeded(43).next_u64(), first[0]);
    }

    #[test]
    fn splitmix_reference_values() {
        // Reference output of SplitMix64 seeded with 0 (as published with the algorithm).
        let mut dice = Dice::seeded(0);
        assert_eq!(dice.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(dice.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn draws_modulo_a_hundred_are_close_to_uniform() {
        let mut dice = Dice::seeded(7);
        let mut buckets = [0u32; 100];
        for _ in 0..100_000 {
            let index = usize::try_from(dice.next_u64() % 100).unwrap();
            buckets[index] += 1;
        }
        // Expected 1000 per bucket, sd ~31.5: 6 sd either way.
        assert!(
            buckets.iter().all(|count| (810..=1190).contains(count)),
            "{buckets:?}"
        );
    }

    #[test]
    fn entropy_differs_between_calls() {
        assert_ne!(entropy(), entropy());
    }
}
