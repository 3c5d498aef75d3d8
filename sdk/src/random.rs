//! A small, fast, deterministic pseudo-random generator for filters' sampling and fault dice.
//!
//! Filters draw per request (which requests get a fault, which are sampled into an access log);
//! a seeded generator keeps those draws reproducible in tests and across worker VMs, and costs
//! no hostcall per request.

/// SplitMix64 (Steele, Lea, Flood 2014): full period, passes BigCrush, one multiply-xorshift
/// round per draw. Plenty for sampling; not for secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub const fn seeded(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next uniformly distributed `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // From the reference implementation (Vigna's splitmix64.c) seeded with 0.
        let mut rng = SplitMix64::seeded(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
