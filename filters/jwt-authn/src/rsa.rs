//! RSA signature verification for JWTs: RS256/384/512 (RSASSA-PKCS1-v1_5) and PS256/384/512
//! (RSASSA-PSS with MGF1 over the same hash and a salt as long as the hash, RFC 7518 §3.3 and
//! §3.5; BoringSSL, which Envoy uses, requires that salt length too).
//!
//! Why not `jsonwebtoken`'s RustCrypto verifier, which the other algorithms use: its `rsa` crate
//! exponentiates with `num-bigint-dig`, which allocates and bounds-checks inside every Montgomery
//! step; in wasm, where a verification is 4× the limb products of a 64-bit host, one RS256
//! check took 1.5 ms. Here the exponentiation is Montgomery multiplication over 32-bit limbs
//! (32×32→64-bit products are native in wasm32), and the per-key constants are computed once,
//! when the key set is parsed. Key, signature and message are all public, so nothing here needs
//! constant-time code.
//!
//! The result is only ever compared with an encoding built independently from the message (for
//! PKCS#1 v1.5 the whole expected block, byte for byte), so an arithmetic mistake rejects a
//! token rather than accepting one; the tests check both against PyJWT-made vectors and
//! against the RustCrypto verifier.

use std::cmp::Ordering;

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The hash of an RS*/PS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// RS256, PS256.
    Sha256,
    /// RS384, PS384.
    Sha384,
    /// RS512, PS512.
    Sha512,
}

impl Hash {
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut hasher = D::new();
            for part in parts {
                hasher.update(part);
            }
            hasher.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// DER of the `DigestInfo` prefix (algorithm identifier with NULL parameters, then the
    /// octet-string header of the digest), RFC 8017 §9.2 note 1.
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }
}

/// The signature scheme of an RS*/PS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// RS*: RSASSA-PKCS1-v1_5.
    Pkcs1v15,
    /// PS*: RSASSA-PSS, MGF1 with the same hash, salt as long as the hash.
    Pss,
}

/// An RSA public key with its Montgomery constants.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    /// `n`, 32-bit limbs, least significant first.
    modulus: Vec<u32>,
    /// Bits of `n`.
    modulus_bits: usize,
    /// `e`.
    exponent: u32,
    /// `-n⁻¹ mod 2³²`.
    n0_inv: u32,
    /// `R² mod n`, with `R = 2^(32 · limbs)`: multiplying by it enters the Montgomery domain.
    r_squared: Vec<u32>,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaPublicKey")
            .field("modulus_bits", &self.modulus_bits)
            .field("exponent", &self.exponent)
            .finish_non_exhaustive()
    }
}

impl RsaPublicKey {
    /// The key with modulus `n` and public exponent `e` (big-endian bytes, leading zeros
    /// allowed); `None` unless `n` is odd and above 1 and `e` is odd, at least 3 and fits 32 bits.
    pub fn new(n: &[u8], e: &[u8]) -> Option<Self> {
        let modulus = limbs_from_be(significant(n));
        let exponent_limbs = limbs_from_be(significant(e));
        let [exponent] = *exponent_limbs.as_slice() else {
            return None;
        };
        let low = *modulus.first()?;
        if low & 1 == 0 || (modulus.len() == 1 && low == 1) || exponent < 3 || exponent & 1 == 0 {
            return None;
        }
        let modulus_bits = bit_length(&modulus);
        let mut key = RsaPublicKey {
            n0_inv: inverse_mod_2_32(low).wrapping_neg(),
            r_squared: Vec::new(),
            modulus,
            modulus_bits,
            exponent,
        };
        key.r_squared = key.compute_r_squared();
        Some(key)
    }

    /// Bits of the modulus.
    pub fn bits(&self) -> usize {
        self.modulus_bits
    }

    /// Whether `signature` is a valid `padding`/`hash` signature of `message` under this key.
    pub fn verify(&self, padding: Padding, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(encoded) = self.public_operation(signature) else {
            return false;
        };
        let digest = hash.digest(&[message]);
        match padding {
            Padding::Pkcs1v15 => pkcs1v15_encoding(hash, &digest, encoded.len())
                .is_some_and(|expected| expected == encoded),
            Padding::Pss => pss_verify(hash, &digest, &encoded, self.modulus_bits - 1),
        }
    }

    /// `signature^e mod n` as a big-endian block as long as the modulus; `None` if the
    /// signature has another length or is not below `n` (RFC 8017 §5.2.2, §8.2.2).
    fn public_operation(&self, signature: &[u8]) -> Option<Vec<u8>> {
        let block_len = self.modulus_bits.div_ceil(8);
        if signature.len() != block_len {
            return None;
        }
        let mut base = limbs_from_be(signature);
        base.resize(self.modulus.len(), 0);
        if compare(&base, &self.modulus) != Ordering::Less {
            return None;
        }
        let base = self.mont_mul(&base, &self.r_squared);
        let mut power = base.clone();
        let top = u32::BITS - self.exponent.leading_zeros() - 1;
        for bit in (0..top).rev() {
            power = self.mont_mul(&power, &power);
            if self.exponent >> bit & 1 == 1 {
                power = self.mont_mul(&power, &base);
            }
        }
        let mut one = vec![0; self.modulus.len()];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        Some(limbs_to_be(&self.mont_mul(&power, &one), block_len))
    }

    /// `a · b · R⁻¹ mod n` for `a, b < n` (Montgomery multiplication, both products of a round
    /// in one pass over the limbs).
    fn mont_mul(&self, a: &[u32], b: &[u32]) -> Vec<u32> {
        let n = &self.modulus;
        let len = n.len();
        // `acc < 2n` between rounds: one limb above `n`'s length. Each round writes its result,
        // divided by 2³², into `next`.
        let mut acc = vec![0u32; len + 1];
        let mut next = vec![0u32; len + 1];
        let (Some(&a_low), Some(&n_low)) = (a.first(), n.first()) else {
            return acc;
        };
        for &b_limb in b {
            let b_limb = u64::from(b_limb);
            let low = u64::from(acc.first().copied().unwrap_or(0)) + u64::from(a_low) * b_limb;
            // Adding `m · n` makes the lowest limb zero, so the round's result is a shift.
            let m = u64::from((low as u32).wrapping_mul(self.n0_inv));
            let mut carry_a = low >> 32;
            let mut carry_n = (u64::from(low as u32) + u64::from(n_low) * m) >> 32;
            let higher = acc.iter().zip(a).zip(n).skip(1);
            for (out, ((&acc_limb, &a_limb), &n_limb)) in next.iter_mut().zip(higher) {
                // (2³² - 1) + (2³² - 1)² + (2³² - 1) = 2⁶⁴ - 1: neither sum overflows.
                let with_a = u64::from(acc_limb) + u64::from(a_limb) * b_limb + carry_a;
                carry_a = with_a >> 32;
                let with_n = u64::from(with_a as u32) + u64::from(n_limb) * m + carry_n;
                carry_n = with_n >> 32;
                *out = with_n as u32;
            }
            let top = u64::from(acc.get(len).copied().unwrap_or(0)) + carry_a + carry_n;
            if let Some([below, above]) = next.get_mut(len - 1..=len) {
                *below = top as u32;
                *above = (top >> 32) as u32;
            }
            std::mem::swap(&mut acc, &mut next);
        }
        let overflow = acc.get(len).is_some_and(|limb| *limb != 0);
        acc.truncate(len);
        if overflow || compare(&acc, n) != Ordering::Less {
            subtract(&mut acc, n);
        }
        acc
    }

    /// `R² mod n`: doubling reaches `2^(32·limbs + a) mod n` in a few steps (numbers below
    /// `2^(bits - 1)` need no reduction), which is `2^a` in Montgomery form; `k` Montgomery
    /// squarings then give `2^(a · 2^k)` in Montgomery form, that is `R · R mod n` when
    /// `a · 2^k = 32 · limbs`.
    fn compute_r_squared(&self) -> Vec<u32> {
        let r_bits = 32 * self.modulus.len();
        let squarings = r_bits.trailing_zeros();
        let a = r_bits >> squarings;
        let mut x = vec![0u32; self.modulus.len()];
        set_bit(&mut x, self.modulus_bits - 1);
        for _ in (self.modulus_bits - 1)..(r_bits + a) {
            let carry = shift_left_one(&mut x);
            if carry || compare(&x, &self.modulus) != Ordering::Less {
                subtract(&mut x, &self.modulus);
            }
        }
        for _ in 0..squarings {
            x = self.mont_mul(&x, &x);
        }
        x
    }
}

/// Strips leading zero bytes of a big-endian integer.
pub(crate) fn significant(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Big-endian bytes to 32-bit limbs, least significant first.
fn limbs_from_be(bytes: &[u8]) -> Vec<u32> {
    bytes
        .rchunks(4)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0u32, |limb, byte| limb << 8 | u32::from(*byte))
        })
        .collect()
}

/// Limbs to a big-endian block of `len` bytes (the value must fit).
fn limbs_to_be(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = limbs
        .iter()
        .flat_map(|limb| limb.to_le_bytes())
        .take(len)
        .collect();
    bytes.resize(len, 0);
    bytes.reverse();
    bytes
}

fn bit_length(limbs: &[u32]) -> usize {
    limbs.iter().rposition(|limb| *limb != 0).map_or(0, |top| {
        32 * top + (u32::BITS - limbs.get(top).map_or(0, |l| l.leading_zeros())) as usize
    })
}

fn set_bit(limbs: &mut [u32], bit: usize) {
    if let Some(limb) = limbs.get_mut(bit / 32) {
        *limb |= 1 << (bit % 32);
    }
}

/// How `a` compares with `b` (same number of limbs).
fn compare(a: &[u32], b: &[u32]) -> Ordering {
    a.iter().rev().cmp(b.iter().rev())
}

/// `a -= b` modulo `2^(32 · limbs)`.
fn subtract(a: &mut [u32], b: &[u32]) {
    let mut borrow = false;
    for (a_limb, b_limb) in a.iter_mut().zip(b) {
        let (difference, under) = a_limb.overflowing_sub(*b_limb);
        let (difference, under_again) = difference.overflowing_sub(u32::from(borrow));
        *a_limb = difference;
        borrow = under || under_again;
    }
}

/// `x <<= 1`; returns the bit shifted out.
fn shift_left_one(x: &mut [u32]) -> bool {
    let mut carry = 0;
    for limb in x.iter_mut() {
        let next = *limb >> 31;
        *limb = *limb << 1 | carry;
        carry = next;
    }
    carry == 1
}

/// The multiplicative inverse of an odd `x` modulo 2³² (Newton's iteration doubles the correct
/// low bits each step, from 3).
fn inverse_mod_2_32(x: u32) -> u32 {
    let mut inverse = x;
    for _ in 0..4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inverse)));
    }
    inverse
}

/// EMSA-PKCS1-v1_5 encoding of `digest` in a block of `len` bytes (RFC 8017 §9.2):
/// `00 01 FF…FF 00 DigestInfo`; `None` if the block is too short.
fn pkcs1v15_encoding(hash: Hash, digest: &[u8], len: usize) -> Option<Vec<u8>> {
    let prefix = hash.digest_info_prefix();
    let info_len = prefix.len() + digest.len();
    let padding = len.checked_sub(info_len + 3).filter(|pad| *pad >= 8)?;
    let mut block = Vec::with_capacity(len);
    block.extend_from_slice(&[0x00, 0x01]);
    block.resize(2 + padding, 0xff);
    block.push(0x00);
    block.extend_from_slice(prefix);
    block.extend_from_slice(digest);
    Some(block)
}

/// MGF1 with `hash` (RFC 8017 §B.2.1).
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut mask = Vec::with_capacity(len + hash.len());
    let mut counter: u32 = 0;
    while mask.len() < len {
        mask.extend(hash.digest(&[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    mask.truncate(len);
    mask
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) of `digest` against the block `encoded` (as long as the
/// modulus), with `em_bits = modulus bits - 1` and a salt as long as the hash.
fn pss_verify(hash: Hash, digest: &[u8], encoded: &[u8], em_bits: usize) -> bool {
    let h_len = hash.len();
    let salt_len = h_len;
    let em_len = em_bits.div_ceil(8);
    // The block has the modulus's length; the encoded message is its last `em_len` bytes and
    // anything before them must be zero.
    let Some((high, em)) = encoded.split_at_checked(encoded.len().saturating_sub(em_len)) else {
        return false;
    };
    if high.iter().any(|byte| *byte != 0) || em.len() != em_len || em_len < h_len + salt_len + 2 {
        return false;
    }
    let Some((trailer, rest)) = em.split_last() else {
        return false;
    };
    if *trailer != 0xbc {
        return false;
    }
    let Some((masked_db, h)) = rest.split_at_checked(em_len - h_len - 1) else {
        return false;
    };
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8.checked_shr(unused_bits as u32).unwrap_or(0);
    if masked_db
        .first()
        .is_some_and(|first| first & !top_mask != 0)
    {
        return false;
    }
    let mut db: Vec<u8> = masked_db
        .iter()
        .zip(mgf1(hash, h, masked_db.len()))
        .map(|(masked, mask)| masked ^ mask)
        .collect();
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    let zeros = em_len - h_len - salt_len - 2;
    let Some((padding, tail)) = db.split_at_checked(zeros) else {
        return false;
    };
    let Some((separator, salt)) = tail.split_first() else {
        return false;
    };
    if padding.iter().any(|byte| *byte != 0) || *separator != 0x01 || salt.len() != salt_len {
        return false;
    }
    hash.digest(&[&[0u8; 8], digest, salt]) == h
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER;
    use jsonwebtoken::{Algorithm, DecodingKey};
    use serde_json::Value;

    use super::*;

    /// `tests/fixtures/rsa_vectors.json`, made by pyca/cryptography
    /// (`tests/fixtures/make_rsa_vectors.py`).
    const VECTORS: &str = include_str!("../tests/fixtures/rsa_vectors.json");

    fn bytes(value: &Value) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.as_str().unwrap())
            .unwrap()
    }

    fn scheme(alg: &str) -> (Padding, Hash, Algorithm) {
        match alg {
            "RS256" => (Padding::Pkcs1v15, Hash::Sha256, Algorithm::RS256),
            "RS384" => (Padding::Pkcs1v15, Hash::Sha384, Algorithm::RS384),
            "RS512" => (Padding::Pkcs1v15, Hash::Sha512, Algorithm::RS512),
            "PS256" => (Padding::Pss, Hash::Sha256, Algorithm::PS256),
            "PS384" => (Padding::Pss, Hash::Sha384, Algorithm::PS384),
            "PS512" => (Padding::Pss, Hash::Sha512, Algorithm::PS512),
            other => panic!("unknown alg {other}"),
        }
    }

    #[test]
    fn exponentiation_matches_python_integers() {
        let vectors: Value = serde_json::from_str(VECTORS).unwrap();
        let mut checked = 0;
        for key in vectors["keys"].as_array().unwrap() {
            let public = RsaPublicKey::new(&bytes(&key["n"]), &bytes(&key["e"])).unwrap();
            assert_eq!(public.bits() as u64, key["bits"].as_u64().unwrap());
            for raw in key["raw"].as_array().unwrap() {
                assert_eq!(
                    public.public_operation(&bytes(&raw["s"])),
                    Some(bytes(&raw["m"])),
                    "{}-bit key",
                    public.bits()
                );
                checked += 1;
            }
        }
        assert!(checked >= 40, "{checked} vectors");
    }

    #[test]
    fn signatures_verify_exactly_as_the_vectors_say() {
        let vectors: Value = serde_json::from_str(VECTORS).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for key in vectors["keys"].as_array().unwrap() {
            let (n, e) = (bytes(&key["n"]), bytes(&key["e"]));
            let public = RsaPublicKey::new(&n, &e).unwrap();
            let rust_crypto = DecodingKey::from_rsa_raw_components(&n, &e);
            for case in key["cases"].as_array().unwrap() {
                let (padding, hash, algorithm) = scheme(case["alg"].as_str().unwrap());
                let message = bytes(&case["message"]);
                let signature = bytes(&case["signature"]);
                let expected = case["valid"].as_bool().unwrap();
                let what = format!(
                    "{}-bit key, {} {}",
                    public.bits(),
                    case["alg"],
                    case["name"]
                );
                assert_eq!(
                    public.verify(padding, hash, &message, &signature),
                    expected,
                    "{what}"
                );
                // The RustCrypto verifier, which this one replaces, agrees on every case.
                let verifier =
                    (DEFAULT_PROVIDER.verifier_factory)(&algorithm, &rust_crypto).unwrap();
                assert_eq!(
                    verifier.verify(&message, &signature).is_ok(),
                    expected,
                    "RustCrypto: {what}"
                );
                if expected {
                    valid += 1;
                } else {
                    invalid += 1;
                }
            }
        }
        assert!(
            valid >= 40 && invalid >= 250,
            "{valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn the_fuzz_corpus_gets_the_same_answers_as_from_rust_crypto() {
        // `fuzz/corpus/rsa/`: a key index, an algorithm index, a signature of the vectors'
        // message (the `rsa` fuzz target's input), kept by bounded fuzzing runs; replayed here
        // with the target's oracle so its findings stay checked without nightly.
        const ALGORITHMS: [&str; 6] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];
        let vectors: Value = serde_json::from_str(VECTORS).unwrap();
        let keys = vectors["keys"].as_array().unwrap();
        let message = bytes(&keys[0]["cases"][0]["message"]);
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/rsa");
        let (mut replayed, mut accepted) = (0, 0);
        for entry in std::fs::read_dir(corpus).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let Some((&[key_index, algorithm_index], signature)) = data.split_first_chunk::<2>()
            else {
                continue;
            };
            let key = &keys[usize::from(key_index) % keys.len()];
            let (n, e) = (bytes(&key["n"]), bytes(&key["e"]));
            let alg = ALGORITHMS[usize::from(algorithm_index) % ALGORITHMS.len()];
            let (padding, hash, algorithm) = scheme(alg);
            let ours = RsaPublicKey::new(&n, &e)
                .unwrap()
                .verify(padding, hash, &message, signature);
            let theirs = (DEFAULT_PROVIDER.verifier_factory)(
                &algorithm,
                &DecodingKey::from_rsa_raw_components(&n, &e),
            )
            .unwrap()
            .verify(&message, &signature.to_vec())
            .is_ok();
            assert_eq!(ours, theirs, "{alg} with key {key_index}: {data:02x?}");
            replayed += 1;
            accepted += usize::from(ours);
        }
        assert!(
            replayed >= 20 && accepted >= 1,
            "{replayed} inputs, {accepted} valid"
        );
    }

    #[test]
    fn keys_the_arithmetic_cannot_serve_are_refused() {
        assert!(
            RsaPublicKey::new(&[0x01, 0x00], &[1, 0, 1]).is_none(),
            "even n"
        );
        assert!(RsaPublicKey::new(&[0x00, 0x01], &[3]).is_none(), "n = 1");
        assert!(RsaPublicKey::new(&[], &[3]).is_none(), "n = 0");
        assert!(RsaPublicKey::new(&[0xc5], &[1]).is_none(), "e = 1");
        assert!(RsaPublicKey::new(&[0xc5], &[4]).is_none(), "even e");
        assert!(
            RsaPublicKey::new(&[0xc5], &[1, 0, 0, 0, 1]).is_none(),
            "e above 32 bits"
        );
        assert!(
            RsaPublicKey::new(&[0, 0, 0xc5], &[0, 3]).is_some(),
            "leading zeros"
        );
    }

    /// A 64-bit modulus and exponent, small enough to check against `u128` arithmetic.
    fn small(n: u64, e: u32) -> RsaPublicKey {
        RsaPublicKey::new(&n.to_be_bytes(), &e.to_be_bytes()).unwrap()
    }

    fn pow_mod(base: u128, exponent: u32, modulus: u128) -> u128 {
        let mut result = 1u128;
        for _ in 0..exponent {
            result = result * base % modulus;
        }
        result
    }

    #[test]
    fn montgomery_exponentiation_matches_u128_arithmetic() {
        // Moduli with the top bit set, clear, and one limb; exponents 3, 5, 17.
        for (n, e) in [
            (0xffff_ffff_ffff_ffc5u64, 3),
            (0x8000_0000_0000_001d, 17),
            (0x0000_0001_0000_0007, 5),
            (0x7fff_ffff_ffff_ffe7, 3),
            (0x0000_0000_ffff_fffb, 3),
        ] {
            let key = small(n, e);
            let block = key.modulus_bits.div_ceil(8);
            for base in [0u64, 1, 2, 3, 0x1234_5678_9abc_def1, n - 1, n / 3] {
                let base = base % n;
                let bytes = base.to_be_bytes();
                let signature = bytes.get(8 - block..).unwrap();
                let out = key.public_operation(signature).unwrap();
                let mut expected = pow_mod(u128::from(base), e, u128::from(n)).to_be_bytes()
                    [16 - block..]
                    .to_vec();
                expected.truncate(block);
                assert_eq!(out, expected, "n={n:#x} e={e} base={base:#x}");
            }
        }
    }
}
