//! Byte-level mutations of a valid input.
//!
//! Generated files are valid; the mutators break them the ways real corruption and hostile
//! files do: bit flips, random bytes, insertions, deletions, duplicated ranges, chunks spliced
//! in from another valid file of the same format, truncation, and "interesting integers"
//! (0, ±1, 2^31, 2^32, 2^62, i64::MAX, …) written over 1, 2, 4 or 8 bytes in either byte order
//! at random offsets, which lands on length fields and header sizes often enough. Text formats
//! (`.npy` headers, TOML, JSON) also get their decimal numbers replaced by interesting ones
//! (`1e18`, `-1`, `18446744073709551616`, `nan`), since a flipped bit rarely makes a digit
//! string huge.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Integers that sit on the edges of the types sizes are read into.
pub const INTERESTING: &[i128] = &[
    0,
    1,
    -1,
    2,
    7,
    8,
    16,
    255,
    256,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    1 << 62,
    i64::MAX as i128,
    i64::MIN as i128,
    u64::MAX as i128,
];

/// Decimal strings for text formats.
const INTERESTING_TEXT: &[&str] = &[
    "0",
    "-1",
    "1e18",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "1099511627776",
    "4611686018427387904",
    "18446744073709551615",
    "18446744073709551616",
    "2147483648",
    "4294967296",
    "99999999999999999999999999",
    "0.0",
    "1e-320",
];

/// Applies 1–6 random mutations (fewer more often) to `data`; `donor` is another valid input
/// of the same format, for splices; `text` adds the number replacements.
pub fn mutate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, donor: &[u8], text: bool) {
    let rounds = 1 + (rng.random::<u32>() % 64).trailing_zeros().min(5) as usize;
    for _ in 0..rounds {
        let ops = if text { 10 } else { 9 };
        match rng.random_range(0..ops) {
            0 => flip_bits(rng, data),
            1 => set_byte(rng, data),
            2 => insert(rng, data),
            3 => delete(rng, data),
            4 => duplicate(rng, data),
            5 => splice(rng, data, donor),
            6 | 7 => interesting_int(rng, data),
            8 => truncate(rng, data),
            _ => interesting_number(rng, data),
        }
    }
}

fn pos(rng: &mut ChaCha8Rng, len: usize) -> usize {
    // Headers live at the start: half the offsets fall in the first 128 bytes.
    if len == 0 {
        0
    } else if rng.random_bool(0.5) {
        rng.random_range(0..len.min(128))
    } else {
        rng.random_range(0..len)
    }
}

fn flip_bits(rng: &mut ChaCha8Rng, data: &mut [u8]) {
    if data.is_empty() {
        return;
    }
    for _ in 0..rng.random_range(1..=4) {
        let i = pos(rng, data.len());
        data[i] ^= 1 << rng.random_range(0..8);
    }
}

fn set_byte(rng: &mut ChaCha8Rng, data: &mut [u8]) {
    if !data.is_empty() {
        let i = pos(rng, data.len());
        data[i] = rng.random();
    }
}

fn insert(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    let i = pos(rng, data.len() + 1).min(data.len());
    let n = rng.random_range(1..=16);
    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
    data.splice(i..i, bytes);
}

fn delete(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let i = pos(rng, data.len());
    let n = rng.random_range(1..=64).min(data.len() - i);
    data.drain(i..i + n);
}

fn duplicate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    if data.is_empty() || data.len() > 1 << 22 {
        return;
    }
    let i = pos(rng, data.len());
    let n = rng.random_range(1..=256).min(data.len() - i);
    let chunk = data[i..i + n].to_vec();
    let at = rng.random_range(0..=data.len());
    data.splice(at..at, chunk);
}

fn splice(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, donor: &[u8]) {
    if donor.is_empty() {
        return;
    }
    let i = rng.random_range(0..donor.len());
    let n = rng.random_range(1..=512).min(donor.len() - i);
    let chunk = &donor[i..i + n];
    let at = pos(rng, data.len() + 1).min(data.len());
    if rng.random_bool(0.5) {
        // Overwrite in place (keeps offsets after it valid).
        let end = (at + n).min(data.len());
        data.splice(at..end, chunk.iter().copied());
    } else {
        data.splice(at..at, chunk.iter().copied());
    }
}

fn interesting_int(rng: &mut ChaCha8Rng, data: &mut [u8]) {
    let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
    if data.len() < width {
        return;
    }
    let mut v = INTERESTING[rng.random_range(0..INTERESTING.len())];
    if rng.random_bool(0.2) {
        v += rng.random_range(-2..=2);
    }
    let le = (v as u64).to_le_bytes();
    let i = pos(rng, data.len() - width + 1);
    let dst = &mut data[i..i + width];
    dst.copy_from_slice(&le[..width]);
    if rng.random_bool(0.5) {
        dst.reverse();
    }
}

fn truncate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    if !data.is_empty() {
        let keep = rng.random_range(0..data.len());
        data.truncate(keep);
    }
}

/// Replaces one run of ASCII digits (with its sign, dot and exponent) by an interesting number.
fn interesting_number(rng: &mut ChaCha8Rng, data: &mut Vec<u8>) {
    let starts: Vec<usize> = (0..data.len())
        .filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit()))
        .collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[rng.random_range(0..starts.len())];
    let mut end = start;
    while end < data.len() && (data[end].is_ascii_digit() || b".eE+-".contains(&data[end])) {
        end += 1;
    }
    let with = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
    data.splice(start..end, with.bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mutations_are_reproducible_and_change_the_input() {
        let base: Vec<u8> = (0..200u8).collect();
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut d = base.clone();
            mutate(&mut rng, &mut d, b"donor 123", true);
            d
        };
        assert_eq!(run(5), run(5));
        assert!((0..20).filter(|&s| run(s) != base).count() >= 18);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut empty = Vec::new();
        for _ in 0..100 {
            mutate(&mut rng, &mut empty, b"", true);
            empty.clear();
        }
    }
}
