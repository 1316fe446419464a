//! Where a key lives.
//!
//! Every view declares *routing columns*, a prefix of its key columns; all rows whose
//! routing columns are equal live on one worker thread, the *owner*:
//!
//! ```text
//! owner = key_hash(routing text) mod (processes × threads per process)
//! process = owner / threads per process
//! ```
//!
//! The routing text is the routing columns' values as text (integers and timestamps in
//! decimal, strings as they are, booleans as `true`/`false`) joined by [`SEPARATOR`].
//! Timely numbers worker threads process by process, so a process owns the worker
//! indices `[process × threads, (process + 1) × threads)`. The dataflows place their
//! arrangements by this rule, and the coordinator sends a lookup by key to the owner.
//!
//! This crate has no dependencies, so that every part of the system can use the one rule.

/// Separates the values of a multi-column routing key.
pub const SEPARATOR: char = '\u{1f}';

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xd6e8_feb8_6659_fd93;

/// The low and high halves of a 128-bit product, xored: every input bit moves many
/// output bits.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The placement hash of a routing text or an id: a fixed 64-bit hash of its UTF-8
/// bytes, the same in every process, build and platform.
///
/// The bytes are taken 8 at a time (little-endian; the last word zero-padded), each
/// word folded into the state with a 128-bit multiply, the length mixed in, and the
/// result finished with MurmurHash3's 64-bit finalizer (Appleby, public domain) so
/// that the low bits, which `mod workers` keeps, depend on every byte. A few
/// nanoseconds for a short id: the dataflows hash every event's ids more than once.
#[inline]
pub fn key_hash(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut h = K0 ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes"));
        h = fold_mul(h ^ word, K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        word[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(word), K1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The worker thread (global index) that owns a hash, of `workers` in all.
pub fn owner(hash: u64, workers: usize) -> usize {
    (hash % workers.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is fixed: these values must never change, or a coordinator and workers
    /// of different builds would disagree about where keys live.
    #[test]
    fn key_hash_is_pinned() {
        let pinned = [
            ("", 0x9ca0_66f1_a4ab_2eea_u64),
            ("a", 0x15c2_242c_ef43_95f6),
            ("user-1", 0x8eff_eec5_61ac_bb2f),
            ("hour\u{1f}1700000000000\u{1f}country\u{1f}FR", 0x1119_4b5f_3201_449e),
        ];
        for (text, want) in pinned {
            assert_eq!(key_hash(text), want, "{text:?}: {:#018x}", key_hash(text));
        }
    }

    /// Ids that differ in one byte, or only in length (trailing zero bytes), hash apart.
    #[test]
    fn near_ids_hash_apart() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            assert!(seen.insert(key_hash(&format!("user-{i}"))));
        }
        assert_ne!(key_hash("a"), key_hash("a\0"));
        assert_ne!(key_hash("abcdefgh"), key_hash("abcdefgh\0"));
    }

    /// Sequential ids spread evenly over every worker count from 1 to 16 (within 5% of
    /// an even share), as the owner rule needs.
    #[test]
    fn sequential_ids_spread_over_workers() {
        let n = 64_000;
        for workers in 1..=16 {
            let mut counts = vec![0usize; workers];
            for i in 0..n {
                counts[owner(key_hash(&format!("u{i}")), workers)] += 1;
            }
            let even = n / workers;
            for (w, c) in counts.iter().enumerate() {
                assert!(c.abs_diff(even) * 20 <= even, "{workers} workers: worker {w} has {c} of {n}");
            }
        }
    }
}
