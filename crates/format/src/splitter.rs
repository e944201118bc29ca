//! Kopia's splitters: content-defined chunking of an object's byte stream (spec §1).
//!
//! Every name kopia registers is supported, with bit-identical boundaries: `FIXED-*` (fixed-length
//! chunks), `DYNAMIC-*-BUZHASH` (buzhash32) and `DYNAMIC-*-RABINKARP` (Rabin–Karp 64), plus the legacy
//! `FIXED` and `DYNAMIC` names. Dynamic splitters roll a 64-byte window over the stream and cut where
//! the low bits of the hash are zero, keeping chunks between half and twice the nominal size.
//!
//! ```
//! use kmover_format::splitter::{new_splitter, DEFAULT_SPLITTER};
//! let mut splitter = new_splitter(DEFAULT_SPLITTER).unwrap();
//! // 20 MiB of zeros: every window hashes to 0, so chunks end as soon as they are allowed (2 MiB).
//! let zeros = vec![0u8; 20 << 20];
//! let mut rest = &zeros[..];
//! let mut lengths = Vec::new();
//! while let Some(n) = splitter.next_boundary(rest) {
//!     lengths.push(n);
//!     rest = &rest[n..];
//! }
//! assert_eq!(lengths, vec![2 << 20; 10]);
//! assert!(rest.is_empty());
//! ```

use crate::error::{FormatError, Result};

/// The splitter kopia uses for new repositories.
pub const DEFAULT_SPLITTER: &str = "DYNAMIC-4M-BUZHASH";

/// Every registered splitter name, sorted like kopia's `SupportedAlgorithms()`.
pub const ALL_SPLITTERS: &[&str] = &[
    "DYNAMIC",
    "DYNAMIC-128K-BUZHASH",
    "DYNAMIC-128K-RABINKARP",
    "DYNAMIC-1M-BUZHASH",
    "DYNAMIC-1M-RABINKARP",
    "DYNAMIC-256K-BUZHASH",
    "DYNAMIC-256K-RABINKARP",
    "DYNAMIC-2M-BUZHASH",
    "DYNAMIC-2M-RABINKARP",
    "DYNAMIC-4M-BUZHASH",
    "DYNAMIC-4M-RABINKARP",
    "DYNAMIC-512K-BUZHASH",
    "DYNAMIC-512K-RABINKARP",
    "DYNAMIC-8M-BUZHASH",
    "DYNAMIC-8M-RABINKARP",
    "FIXED",
    "FIXED-128K",
    "FIXED-1M",
    "FIXED-256K",
    "FIXED-2M",
    "FIXED-4M",
    "FIXED-512K",
    "FIXED-8M",
];

/// Finds chunk boundaries in one object's byte stream, fed in pieces of any size.
///
/// Contract: `next_boundary(data)` consumes bytes from the front of `data`. It returns `Some(n)`,
/// `1 <= n <= data.len()`, when the current chunk ends after `data[n - 1]`: exactly `n` bytes were
/// consumed, a new chunk begins, and the caller continues with `data[n..]` (which may hold further
/// boundaries). It returns `None` when no chunk ends inside `data`: every byte was consumed and
/// belongs to the current chunk (`None` for empty `data`). The state (rolling window, length of the
/// current chunk) carries over between calls, so the boundaries depend only on the concatenated
/// stream, never on how it was cut into pieces — the same contract as kopia's `NextSplitPoint`. The
/// bytes after the last boundary form the object's final chunk. No chunk is longer than
/// `max_segment_size()`. `reset()` returns to the initial state for the next object.
pub trait Splitter: Send {
    fn next_boundary(&mut self, data: &[u8]) -> Option<usize>;
    fn max_segment_size(&self) -> usize;
    fn reset(&mut self);
}

/// Creates the splitter registered under `name` (see [`ALL_SPLITTERS`]).
pub fn new_splitter(name: &str) -> Result<Box<dyn Splitter>> {
    let unsupported = || FormatError::Unsupported {
        what: "splitter",
        name: name.to_string(),
    };
    if !ALL_SPLITTERS.contains(&name) {
        return Err(unsupported());
    }
    // The legacy names mean 4 MiB; the original "DYNAMIC" algorithm is gone from kopia and the name
    // now means buzhash.
    let (size, algorithm) = match name {
        "FIXED" => ("4M", "FIXED"),
        "DYNAMIC" => ("4M", "BUZHASH"),
        _ => match name.strip_prefix("FIXED-") {
            Some(size) => (size, "FIXED"),
            None => name
                .trim_start_matches("DYNAMIC-")
                .split_once('-')
                .ok_or_else(unsupported)?,
        },
    };
    let size = match size {
        "128K" => 128 << 10,
        "256K" => 256 << 10,
        "512K" => 512 << 10,
        "1M" => 1 << 20,
        "2M" => 2 << 20,
        "4M" => 4 << 20,
        "8M" => 8 << 20,
        _ => return Err(unsupported()),
    };
    Ok(match algorithm {
        "FIXED" => Box::new(FixedSplitter::new(size)),
        "BUZHASH" => Box::new(DynamicSplitter::<Buzhash32>::new(size)),
        "RABINKARP" => Box::new(DynamicSplitter::<RabinKarp64>::new(size)),
        _ => return Err(unsupported()),
    })
}

/// Cuts every `chunk_len` bytes.
struct FixedSplitter {
    chunk_len: usize,
    /// Bytes of the current chunk consumed so far.
    pending: usize,
}

impl FixedSplitter {
    fn new(chunk_len: usize) -> Self {
        FixedSplitter {
            chunk_len,
            pending: 0,
        }
    }
}

impl Splitter for FixedSplitter {
    fn next_boundary(&mut self, data: &[u8]) -> Option<usize> {
        let needed = self.chunk_len - self.pending;
        if data.len() < needed {
            self.pending += data.len();
            return None;
        }
        self.pending = 0;
        Some(needed)
    }

    fn max_segment_size(&self) -> usize {
        self.chunk_len
    }

    fn reset(&mut self) {
        self.pending = 0;
    }
}

/// Bytes in the rolling-hash window of the dynamic splitters.
const WINDOW: usize = 64;

/// A hash over the last [`WINDOW`] bytes that depends only on those bytes, updated one byte at a time.
trait RollingHash: Copy + Send + 'static {
    /// The hash of a window of zero bytes: kopia primes each object's window with 64 zeros.
    const ZERO_WINDOW: Self;
    /// Slides the window by one byte: `leaving` is the oldest byte, `entering` the new one.
    fn roll(self, leaving: u8, entering: u8) -> Self;
    fn low_bits_zero(self, mask: u64) -> bool;

    /// Rolls `leaving[i]` out and `entering[i]` in for each `i` (equal lengths), stopping after the
    /// first byte where the masked hash is zero; returns how many bytes were rolled then.
    #[inline(always)]
    fn scan(&mut self, leaving: &[u8], entering: &[u8], mask: u64) -> Option<usize> {
        for (i, (&out, &inn)) in leaving.iter().zip(entering).enumerate() {
            *self = self.roll(out, inn);
            if self.low_bits_zero(mask) {
                return Some(i + 1);
            }
        }
        None
    }

    /// The hash of a full window, regardless of the current state.
    fn of_window(window: &[u8; WINDOW]) -> Self {
        // Roll the bytes into a window of zeros; after WINDOW steps only they remain in it.
        window
            .iter()
            .fold(Self::ZERO_WINDOW, |hash, &entering| hash.roll(0, entering))
    }
}

/// buzhash32 (rollinghash v4.0.0) with its default table.
#[derive(Clone, Copy)]
struct Buzhash32(u32);

/// rollinghash's `GenerateHashes(1)`: the low 32 bits of Go `math/rand` seed 1 `Int63()` draws.
#[rustfmt::skip]
static BUZHASH_TABLE: [u32; 256] = [
    0x07fcfd52, 0x5f3f164f, 0x6695721d, 0x7b4d7c03, 0x49c6e2d1, 0x0d1d68d8, 0x7916001e, 0x22c4d294,
    0x392907a0, 0x189deb99, 0xf3875d04, 0x95e94627, 0xba517936, 0x83c471d4, 0x7cb3ad0b, 0xa42655d9,
    0x7c4e0b68, 0xd4491d1b, 0x25632186, 0xa9d78d73, 0x169c1121, 0xbb158644, 0xb68e6a3f, 0x759805f5,
    0x2cdf5b8a, 0x57d29245, 0xc5d6d268, 0x6b83d0e2, 0x7674cb74, 0xb068d9db, 0xbb9457d8, 0xa15d523b,
    0x794209ff, 0x9da1d7eb, 0x5a25e0cb, 0xf840ec4b, 0x36d4ff9b, 0xf4a5ee3b, 0x5ad145f4, 0xf6740304,
    0x3f71f8cb, 0x91018d7c, 0xfccae224, 0xb186b51f, 0x7d9e8fbc, 0x93f93f33, 0xf63a5b6f, 0x19476c36,
    0xbc897d06, 0x169873f5, 0x724c7af1, 0x581eeb39, 0x2257bb7d, 0x6f269a28, 0xbe8e9981, 0x7039374b,
    0x25416fed, 0xded7e411, 0x6678e7aa, 0x244fcd36, 0x56aa6b86, 0xde4561ad, 0x3e99b0a8, 0xbed80a3a,
    0xe58348b0, 0xaf63e58d, 0x406aec9d, 0xc233f007, 0xa5ead0bd, 0x050143a6, 0x738b6829, 0x3699caf3,
    0x967cd710, 0x06f665a6, 0x25fd3d7f, 0x0fd6e479, 0x26fbf29b, 0x16de4c35, 0x2bf3394b, 0x4af864ba,
    0x1cb9e6c6, 0x41439089, 0x69a39144, 0xc34f182d, 0x421657ff, 0xf9fc6568, 0x8b02c917, 0x6c9c64b7,
    0x83d17909, 0xea3d4ca5, 0xaf635d47, 0x7fc78769, 0xbe14186f, 0x3539b1ea, 0xe9174548, 0xc051e18a,
    0x07b73658, 0x29ec300c, 0xa250bf34, 0xa7ed5d97, 0xfe3dea79, 0xb8b352f7, 0xc9b344e9, 0x8e5f0475,
    0x1941e52a, 0x2694763d, 0x6b40eabc, 0x8485d68b, 0x336eacca, 0x4399a363, 0x67149b9c, 0xae10a901,
    0x5a5ffefb, 0x563b26de, 0x6f00f02b, 0x9f06397d, 0x545836c4, 0x31d6416b, 0x12f4128d, 0x752f33ff,
    0x4a305605, 0x0c8dc214, 0x72521a90, 0x8eb3e4a1, 0x83efc6c6, 0x090ec04f, 0xc1540864, 0xec2c8aaa,
    0x70ab53ba, 0x38d3b494, 0x878d4063, 0xa317ae3f, 0x3cb62f07, 0xf360412c, 0x4ffbf3a9, 0x22d554b4,
    0x3f190476, 0x0796a710, 0xf5c353cf, 0x04f59bb7, 0x2d230176, 0xe2d6a9ce, 0x3f1d7427, 0xafd915bb,
    0xb01aa47d, 0xcde2c269, 0x7417bf38, 0x1e094f9a, 0x55ece0ea, 0xcb94539b, 0x13d346b5, 0x54e0c0c1,
    0x6db30e37, 0xdc02b390, 0xa6e222f5, 0xe2f8c1fe, 0x2e166bdf, 0x67588a74, 0x21898f34, 0x4c330f1d,
    0x19af53ba, 0x70658b94, 0x133c9673, 0x4efeeadd, 0x0f212551, 0x070f0914, 0x6f241c57, 0xf13e41b7,
    0x3be70cb0, 0xf4b6f47f, 0x20f31127, 0x6551cb89, 0x289cbd2c, 0x8946f23d, 0x40a79c3b, 0x03c6d982,
    0x0365790c, 0x0cf52517, 0x0bb131e8, 0x3da5475c, 0x139efcca, 0xbcd44eb4, 0xa54af747, 0xb73c32ed,
    0x9f6c47ac, 0xe8ba8f22, 0x54043a66, 0x3b0a7f20, 0xb4926431, 0xe17c02d5, 0x8f0d2558, 0x014fbff2,
    0x7f803594, 0x79b76fbe, 0x33fe2656, 0x792c8ee8, 0x6b41292d, 0xfdff9c32, 0x82093298, 0x59483870,
    0xb2d5a113, 0x2dd96e5a, 0x5b8e56a9, 0xebd9dda9, 0x04f9ce92, 0xcb440950, 0xa67e52b1, 0x49f6d261,
    0x92417fc3, 0x1c3b6bd9, 0xb027b7e0, 0x1f765a41, 0x44c9ab40, 0x45d99121, 0xfd7a84af, 0x99b75788,
    0xe3abff4a, 0xa88aa67f, 0x736e41cc, 0x9cbcbe5e, 0x7b3ccebc, 0xe1b7fa93, 0x315ae6af, 0x9cced2e2,
    0x19ea0f2f, 0xa9770722, 0x84a6bfdc, 0x88f03f07, 0xa44a03a4, 0x27a6b885, 0xb580c8ba, 0x018153da,
    0xb648e604, 0x51180278, 0x893a310f, 0x728f5f4c, 0x37f5198b, 0x3cc0ea9b, 0xe39d02db, 0x13883142,
    0xca599392, 0xc12d154e, 0xc176163d, 0x5c92e2b8, 0xf9f95ede, 0xb802bdfc, 0x8a928585, 0xdca6e10b,
    0x887953e8, 0x48b9e962, 0xe533e9a3, 0x5e0ce6e5, 0x1dba77ae, 0xc8214b8a, 0x53b428d7, 0x4cf20a65,
];

impl RollingHash for Buzhash32 {
    // A zero window is 32 identical pairs of terms rotated by equal amounts mod 32: they cancel.
    const ZERO_WINDOW: Self = Buzhash32(0);

    #[inline(always)]
    fn roll(self, leaving: u8, entering: u8) -> Self {
        // The leaving byte entered 64 rolls ago, so its term is rotated by 64 mod 32 = 0 bits.
        let leaving = BUZHASH_TABLE[usize::from(leaving)];
        let entering = BUZHASH_TABLE[usize::from(entering)];
        // XOR the table entries first: only one XOR then depends on the previous hash.
        Buzhash32(self.0.rotate_left(1) ^ (leaving ^ entering))
    }

    #[inline(always)]
    fn low_bits_zero(self, mask: u64) -> bool {
        u64::from(self.0) & mask == 0
    }

    // Eight bytes per step. With x[k] = T[leaving[k]] ^ T[entering[k]], h[k+1] = rotl(h[k], 1) ^ x[k],
    // so h[k+2] = rotl(h[k], 2) ^ rotl(x[k], 1) ^ x[k+1]: one dependent rotate+XOR per two bytes.
    // One branch tests all eight hashes; a block holding a cut is redone byte by byte.
    #[inline(always)]
    fn scan(&mut self, leaving: &[u8], entering: &[u8], mask: u64) -> Option<usize> {
        // The hash has 32 bits, so higher mask bits never match anything.
        let mask = mask as u32;
        let (leaving_blocks, leaving_rest) = leaving.as_chunks::<8>();
        let (entering_blocks, entering_rest) = entering.as_chunks::<8>();
        let mut done = 0;
        for (out8, in8) in leaving_blocks.iter().zip(entering_blocks) {
            let x =
                |k: usize| BUZHASH_TABLE[usize::from(out8[k])] ^ BUZHASH_TABLE[usize::from(in8[k])];
            let h0 = self.0;
            let (x0, x1, x2, x3) = (x(0), x(1), x(2), x(3));
            let (x4, x5, x6, x7) = (x(4), x(5), x(6), x(7));
            let h2 = h0.rotate_left(2) ^ (x0.rotate_left(1) ^ x1);
            let h4 = h2.rotate_left(2) ^ (x2.rotate_left(1) ^ x3);
            let h6 = h4.rotate_left(2) ^ (x4.rotate_left(1) ^ x5);
            let h8 = h6.rotate_left(2) ^ (x6.rotate_left(1) ^ x7);
            let h1 = h0.rotate_left(1) ^ x0;
            let h3 = h2.rotate_left(1) ^ x2;
            let h5 = h4.rotate_left(1) ^ x4;
            let h7 = h6.rotate_left(1) ^ x6;
            // (h & mask) - 1 wraps around to set bit 63 exactly when the masked bits are zero.
            let flag = |h: u32| u64::from(h & mask).wrapping_sub(1);
            let cut_flags = flag(h1) | flag(h2) | flag(h3) | flag(h4);
            let cut_flags = cut_flags | flag(h5) | flag(h6) | flag(h7) | flag(h8);
            if cut_flags >> 63 != 0 {
                // Leaving the loop here keeps the loop itself lean; the scan stops in this block.
                let rest = done..;
                return scan_bytes(self, &leaving[rest.clone()], &entering[rest], mask)
                    .map(|n| done + n);
            }
            self.0 = h8;
            done += 8;
        }
        scan_bytes(self, leaving_rest, entering_rest, mask).map(|n| done + n)
    }
}

/// [`RollingHash::scan`] for buzhash, one byte at a time.
#[inline(always)]
fn scan_bytes(hash: &mut Buzhash32, leaving: &[u8], entering: &[u8], mask: u32) -> Option<usize> {
    for (i, (&out, &inn)) in leaving.iter().zip(entering).enumerate() {
        *hash = hash.roll(out, inn);
        if hash.0 & mask == 0 {
            return Some(i + 1);
        }
    }
    None
}

/// Rabin–Karp 64 (rollinghash v4.0.0): the window as a GF(2) polynomial, oldest byte highest,
/// reduced modulo [`RABIN_POLYNOMIAL`].
#[derive(Clone, Copy)]
struct RabinKarp64(u64);

/// rollinghash's `RandomPolynomial(1)`, an irreducible polynomial of degree 53.
const RABIN_POLYNOMIAL: u64 = 0x002e_3e3e_4a30_5605;
const RABIN_DEGREE: u32 = 53;
/// Shift that leaves the 8 bits which overflow the degree when a byte is shifted in.
const RABIN_TOP_SHIFT: u32 = RABIN_DEGREE - 8;

/// Remainder of the GF(2) polynomial division `x mod RABIN_POLYNOMIAL`.
const fn rabin_mod(mut x: u64) -> u64 {
    while x != 0 && 63 - x.leading_zeros() >= RABIN_DEGREE {
        x ^= RABIN_POLYNOMIAL << (63 - x.leading_zeros() - RABIN_DEGREE);
    }
    x
}

/// `OUT[b]` = hash of a window holding `b` followed by 63 zeros: XOR removes the leaving byte.
static RABIN_OUT: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut h = rabin_mod(b as u64);
        let mut i = 1;
        while i < WINDOW {
            h = rabin_mod(h << 8);
            i += 1;
        }
        table[b] = h;
        b += 1;
    }
    table
};

/// `MOD[t]` reduces the top byte `t` that overflows after a shift by 8: it clears those bits and
/// adds their remainder.
static RABIN_MOD: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut t = 0;
    while t < 256 {
        let top = (t as u64) << RABIN_DEGREE;
        table[t] = rabin_mod(top) | top;
        t += 1;
    }
    table
};

impl RollingHash for RabinKarp64 {
    const ZERO_WINDOW: Self = RabinKarp64(0);

    #[inline(always)]
    fn roll(self, leaving: u8, entering: u8) -> Self {
        let without_leaving = self.0 ^ RABIN_OUT[usize::from(leaving)];
        let top = (without_leaving >> RABIN_TOP_SHIFT) as u8;
        RabinKarp64(((without_leaving << 8) | u64::from(entering)) ^ RABIN_MOD[usize::from(top)])
    }

    #[inline(always)]
    fn low_bits_zero(self, mask: u64) -> bool {
        self.0 & mask == 0
    }
}

/// Kopia's dynamic splitter: a chunk of length `L` ends after a byte when `min_size <= L` and the
/// hash of the 64 bytes ending there has its low bits (`mask`) zero, or when `L == max_size`. The
/// window runs across chunk boundaries; only a new object restarts it from zeros.
struct DynamicSplitter<H> {
    hash: H,
    /// The last [`WINDOW`] bytes of the stream, oldest first (zeros at the start of an object).
    window: [u8; WINDOW],
    /// Bytes of the current chunk consumed so far.
    chunk_len: usize,
    mask: u64,
    min_size: usize,
    max_size: usize,
}

impl<H: RollingHash> DynamicSplitter<H> {
    /// `average` must be a power of two (kopia: mask = average − 1, min = average / 2, max = 2·average).
    fn new(average: usize) -> Self {
        debug_assert!(average.is_power_of_two() && average >= 2);
        DynamicSplitter {
            hash: H::ZERO_WINDOW,
            window: [0; WINDOW],
            chunk_len: 0,
            mask: average as u64 - 1,
            min_size: average / 2,
            max_size: average * 2,
        }
    }

    /// Makes `window` the last [`WINDOW`] bytes of the stream after `consumed` was appended.
    fn remember_window(&mut self, consumed: &[u8]) {
        if let Some(tail) = consumed.last_chunk::<WINDOW>() {
            self.window = *tail;
        } else {
            self.window.copy_within(consumed.len().., 0);
            self.window[WINDOW - consumed.len()..].copy_from_slice(consumed);
        }
    }
}

/// Rolls `data[start..end]` into `hash` and returns the position just after the first byte where
/// the masked hash is zero. `window` holds the 64 bytes preceding `data[0]`.
#[inline(always)]
fn find_cut<H: RollingHash>(
    hash: &mut H,
    window: &[u8; WINDOW],
    data: &[u8],
    start: usize,
    end: usize,
    mask: u64,
) -> Option<usize> {
    let mut h = *hash;
    let mut pos = start;
    // The first bytes of `data` push out bytes saved from earlier calls.
    while pos < end.min(WINDOW) {
        h = h.roll(window[pos], data[pos]);
        pos += 1;
        if h.low_bits_zero(mask) {
            *hash = h;
            return Some(pos);
        }
    }
    if pos < end {
        // From here on the leaving byte is in `data` too.
        let leaving = &data[pos - WINDOW..end - WINDOW];
        let entering = &data[pos..end];
        let found = h.scan(leaving, entering, mask);
        *hash = h;
        return found.map(|n| pos + n);
    }
    *hash = h;
    None
}

impl<H: RollingHash> Splitter for DynamicSplitter<H> {
    fn next_boundary(&mut self, data: &[u8]) -> Option<usize> {
        // Bytes that leave the chunk shorter than `min_size` cannot end it. Since the hash depends
        // only on the window, just the last 64 of them need rolling.
        let skip = self
            .min_size
            .saturating_sub(self.chunk_len + 1)
            .min(data.len());
        if let Some(tail) = data[..skip].last_chunk::<WINDOW>() {
            self.hash = H::of_window(tail);
        } else {
            for (&leaving, &entering) in self.window.iter().zip(&data[..skip]) {
                self.hash = self.hash.roll(leaving, entering);
            }
        }
        self.chunk_len += skip;

        // `chunk_len < max_size` here: reaching `max_size` always ends the chunk.
        let end = skip + (self.max_size - self.chunk_len).min(data.len() - skip);
        if let Some(cut) = find_cut(&mut self.hash, &self.window, data, skip, end, self.mask) {
            self.chunk_len = 0;
            self.remember_window(&data[..cut]);
            return Some(cut);
        }
        self.chunk_len += end - skip;
        self.remember_window(&data[..end]);
        if self.chunk_len == self.max_size {
            self.chunk_len = 0;
            return Some(end);
        }
        None
    }

    fn max_segment_size(&self) -> usize {
        self.max_size
    }

    fn reset(&mut self) {
        self.hash = H::ZERO_WINDOW;
        self.window = [0; WINDOW];
        self.chunk_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use super::*;

    /// Boundaries computed by the real kopia v0.22.3 (see the header of the file for the format).
    const KOPIA_VECTORS: &str = include_str!("../tests/data/splitter/kopia-v0.22.3-chunks.txt");

    /// splitmix64, identical to the Go generator's.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = SplitMix64(seed);
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// One `PIECE` of an `input` record.
    fn generate_piece(spec: &str, out: &mut Vec<u8>) {
        let fields: Vec<&str> = spec.split(':').collect();
        let number = |s: &str| s.parse::<usize>().unwrap();
        match fields[..] {
            ["zeros", len] => out.resize(out.len() + number(len), 0),
            ["random", seed, len] => out.extend(random_bytes(seed.parse().unwrap(), number(len))),
            ["text", len] => {
                let text = b"The quick brown fox jumps over the lazy dog.\n";
                out.extend(text.iter().cycle().take(number(len)));
            }
            ["lines", len] => {
                let end = out.len() + number(len);
                for i in 0.. {
                    if out.len() >= end {
                        break;
                    }
                    out.extend(
                        format!("{i:08} the quick brown fox jumps over the lazy dog\n").bytes(),
                    );
                }
                out.truncate(end);
            }
            _ => panic!("unknown piece {spec}"),
        }
    }

    /// `L` or `L*N` (N copies of L).
    fn parse_lengths(fields: &[&str]) -> Vec<usize> {
        let mut out = Vec::new();
        for field in fields {
            match field.split_once('*') {
                Some((len, count)) => out.extend(std::iter::repeat_n(
                    len.parse::<usize>().unwrap(),
                    count.parse().unwrap(),
                )),
                None => out.push(field.parse().unwrap()),
            }
        }
        out
    }

    struct Vectors {
        inputs: HashMap<&'static str, Vec<u8>>,
        records: Vec<Vec<&'static str>>,
    }

    impl Vectors {
        /// Parsed once and shared: generating the inputs dominates the tests' run time.
        fn load() -> &'static Vectors {
            static VECTORS: OnceLock<Vectors> = OnceLock::new();
            VECTORS.get_or_init(Vectors::parse)
        }

        fn parse() -> Vectors {
            let mut inputs = HashMap::new();
            let mut records = Vec::new();
            for line in KOPIA_VECTORS.lines().filter(|l| !l.starts_with('#')) {
                let fields: Vec<&str> = line.split(' ').filter(|f| !f.is_empty()).collect();
                if fields[0] == "input" {
                    let mut data = Vec::new();
                    fields[2..]
                        .iter()
                        .for_each(|piece| generate_piece(piece, &mut data));
                    inputs.insert(fields[1], data);
                } else {
                    records.push(fields);
                }
            }
            Vectors { inputs, records }
        }

        /// The records of one kind, without the kind field.
        fn records(&self, kind: &str) -> impl Iterator<Item = &[&'static str]> {
            self.records
                .iter()
                .filter(move |r| r[0] == kind)
                .map(|r| &r[1..])
        }

        fn record(&self, kind: &str) -> &[&'static str] {
            self.records(kind).next().unwrap()
        }
    }

    /// Chunk lengths when the whole object is passed in one call.
    fn chunk_lengths(splitter: &mut dyn Splitter, data: &[u8]) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut rest = data;
        while let Some(n) = splitter.next_boundary(rest) {
            assert!((1..=rest.len()).contains(&n));
            lengths.push(n);
            rest = &rest[n..];
        }
        if !rest.is_empty() {
            lengths.push(rest.len());
        }
        lengths
    }

    /// Chunk lengths when the object is passed in pieces whose lengths come from `next_piece_len`.
    fn chunk_lengths_in_pieces(
        splitter: &mut dyn Splitter,
        data: &[u8],
        mut next_piece_len: impl FnMut() -> usize,
    ) -> Vec<usize> {
        let mut lengths = Vec::new();
        let mut current = 0;
        let mut remaining = data;
        while !remaining.is_empty() {
            let (mut piece, rest) = remaining.split_at(next_piece_len().min(remaining.len()));
            remaining = rest;
            while let Some(n) = splitter.next_boundary(piece) {
                assert!((1..=piece.len()).contains(&n));
                lengths.push(current + n);
                current = 0;
                piece = &piece[n..];
            }
            current += piece.len();
        }
        if current > 0 {
            lengths.push(current);
        }
        lengths
    }

    /// Piece lengths from 1 byte to 1 MiB, biased towards small ones to cross the window often.
    fn random_piece_len(rng: &mut SplitMix64) -> usize {
        match rng.below(3) {
            0 => 1 + rng.below(WINDOW * 2),
            1 => 1 + rng.below(64 << 10),
            _ => 1 + rng.below(1 << 20),
        }
    }

    fn hex_u64(s: &str) -> u64 {
        u64::from_str_radix(s, 16).unwrap()
    }

    /// A splitter at a size kopia does not register, built like kopia's unexported factories.
    fn unregistered(algorithm: &str, average: usize) -> Box<dyn Splitter> {
        match algorithm {
            "BUZHASH" => Box::new(DynamicSplitter::<Buzhash32>::new(average)),
            "RABINKARP" => Box::new(DynamicSplitter::<RabinKarp64>::new(average)),
            _ => panic!("unknown algorithm {algorithm}"),
        }
    }

    #[test]
    fn registered_names_match_kopia() {
        let vectors = Vectors::load();
        assert_eq!(vectors.record("algorithms"), ALL_SPLITTERS);
        assert!(ALL_SPLITTERS.contains(&DEFAULT_SPLITTER));
        for name in ALL_SPLITTERS {
            let size: usize = match name
                .trim_start_matches("DYNAMIC-")
                .trim_start_matches("FIXED-")
            {
                "FIXED" | "DYNAMIC" => 4 << 20,
                rest if rest.starts_with("128K") => 128 << 10,
                rest if rest.starts_with("256K") => 256 << 10,
                rest if rest.starts_with("512K") => 512 << 10,
                rest if rest.starts_with("1M") => 1 << 20,
                rest if rest.starts_with("2M") => 2 << 20,
                rest if rest.starts_with("4M") => 4 << 20,
                rest if rest.starts_with("8M") => 8 << 20,
                rest => panic!("unexpected size in {rest}"),
            };
            let expected_max = if name.starts_with("FIXED") {
                size
            } else {
                2 * size
            };
            assert_eq!(
                new_splitter(name).unwrap().max_segment_size(),
                expected_max,
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_names_are_rejected() {
        for name in [
            "",
            "dynamic-4m-buzhash",
            "DYNAMIC-4M",
            "DYNAMIC-3M-BUZHASH",
            "DYNAMIC-4M-FIXED",
            "DYNAMIC-4M-BUZHASH-",
            "DYNAMIC-16M-BUZHASH",
            "FIXED-",
            "FIXED-4M-BUZHASH",
            "FIXED-1K",
            "DYNAMIC-4M-GEARHASH",
        ] {
            assert_eq!(
                new_splitter(name).err(),
                Some(FormatError::Unsupported {
                    what: "splitter",
                    name: name.to_string()
                })
            );
        }
    }

    #[test]
    fn hash_unit_vectors_from_spec() {
        let zero_window = [0u8; WINDOW];
        let counting: [u8; WINDOW] = std::array::from_fn(|i| i as u8);

        assert_eq!(Buzhash32::of_window(&zero_window).0, 0);
        let abc = b"abc"
            .iter()
            .fold(Buzhash32::ZERO_WINDOW, |h, &c| h.roll(0, c));
        assert_eq!(abc.0, 0x530a_1170);
        let counted = Buzhash32::of_window(&counting);
        assert_eq!(counted.0, 0xd9b0_c9cf);
        assert_eq!(counted.roll(0x00, 0x40).0, 0x511e_267d);

        assert_eq!(RabinKarp64::of_window(&zero_window).0, 0);
        let abc = b"abc"
            .iter()
            .fold(RabinKarp64::ZERO_WINDOW, |h, &c| h.roll(0, c));
        assert_eq!(abc.0, 0x0061_6263);
        let counted = RabinKarp64::of_window(&counting);
        assert_eq!(counted.0, 0x001a_9159_8731_792b);
        assert_eq!(counted.roll(0x00, 0x40).0, 0x0008_6093_85aa_1452);
    }

    #[test]
    fn hash_tables_match_kopia() {
        let vectors = Vectors::load();
        let buzhash: Vec<u64> = vectors
            .record("buzhash32-table")
            .iter()
            .map(|h| hex_u64(h))
            .collect();
        assert_eq!(buzhash, BUZHASH_TABLE.map(u64::from));
        assert_eq!(
            hex_u64(vectors.record("rabinkarp64-pol")[0]),
            RABIN_POLYNOMIAL
        );
        let out: Vec<u64> = vectors
            .record("rabinkarp64-out")
            .iter()
            .map(|h| hex_u64(h))
            .collect();
        assert_eq!(out, RABIN_OUT);
        let modulo: Vec<u64> = vectors
            .record("rabinkarp64-mod")
            .iter()
            .map(|h| hex_u64(h))
            .collect();
        assert_eq!(modulo, RABIN_MOD);
        // Check values from the spec (§1.6).
        assert_eq!(RABIN_OUT[0x80], 0x0005_00b9_63c7_432b);
        assert_eq!(RABIN_MOD[0xff], 0x1fe6_0624_da18_a7a6);
    }

    fn check_rolls<H: RollingHash>(data: &[u8], expected: &[&str], value: impl Fn(H) -> u64) {
        let (window, rest) = data.split_first_chunk::<WINDOW>().unwrap();
        let mut hash = H::of_window(window);
        let mut got = vec![value(hash)];
        for (i, &entering) in rest.iter().enumerate() {
            hash = hash.roll(data[i], entering);
            got.push(value(hash));
        }
        let expected: Vec<u64> = expected.iter().map(|h| hex_u64(h)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn rolls_match_kopia() {
        let vectors = Vectors::load();
        for record in vectors.records("roll") {
            let data = &vectors.inputs[record[1]];
            match record[0] {
                "BUZHASH" => check_rolls::<Buzhash32>(data, &record[2..], |h| u64::from(h.0)),
                "RABINKARP" => check_rolls::<RabinKarp64>(data, &record[2..], |h| h.0),
                other => panic!("unknown hash {other}"),
            }
        }
    }

    #[test]
    fn boundaries_match_kopia() {
        let vectors = Vectors::load();
        let mut checked = 0;
        for name in ALL_SPLITTERS {
            // One instance per name, reset between objects as kopia's pool does.
            let mut splitter = new_splitter(name).unwrap();
            for record in vectors.records("split").filter(|r| r[0] == *name) {
                let expected = parse_lengths(&record[2..]);
                let got = chunk_lengths(splitter.as_mut(), &vectors.inputs[record[1]]);
                assert_eq!(got, expected, "{name} on {}", record[1]);
                splitter.reset();
                checked += 1;
            }
        }
        assert_eq!(checked, vectors.records("split").count());
        assert_eq!(checked, ALL_SPLITTERS.len() * 9);
    }

    #[test]
    fn boundaries_do_not_depend_on_piece_sizes() {
        let vectors = Vectors::load();
        let mut rng = SplitMix64(7);
        for record in vectors.records("split") {
            let mut splitter = new_splitter(record[0]).unwrap();
            let data = &vectors.inputs[record[1]];
            let got =
                chunk_lengths_in_pieces(splitter.as_mut(), data, || random_piece_len(&mut rng));
            let context = format!("{} on {}", record[0], record[1]);
            assert_eq!(got, parse_lengths(&record[2..]), "{context}");
        }
    }

    #[test]
    fn small_average_sizes_match_kopia_byte_by_byte_too() {
        let vectors = Vectors::load();
        let mut checked = 0;
        for record in vectors.records("small") {
            let average: usize = record[1].parse().unwrap();
            let data = &vectors.inputs[record[2]];
            let expected = parse_lengths(&record[3..]);
            let context = format!("{} {average} on {}", record[0], record[2]);
            let mut splitter = unregistered(record[0], average);
            assert_eq!(
                chunk_lengths(splitter.as_mut(), data),
                expected,
                "{context}"
            );
            splitter.reset();
            let got = chunk_lengths_in_pieces(splitter.as_mut(), data, || 1);
            assert_eq!(got, expected, "{context} byte by byte");
            checked += 1;
        }
        assert_eq!(checked, 16);
    }

    #[test]
    fn registered_splitter_byte_by_byte() {
        let vectors = Vectors::load();
        let data = &vectors.inputs["random-20MiB"][..1 << 20];
        let mut whole = new_splitter("DYNAMIC-128K-RABINKARP").unwrap();
        let mut bytewise = new_splitter("DYNAMIC-128K-RABINKARP").unwrap();
        let expected = chunk_lengths(whole.as_mut(), data);
        assert!(expected.len() > 3);
        assert_eq!(
            chunk_lengths_in_pieces(bytewise.as_mut(), data, || 1),
            expected
        );
    }

    #[test]
    fn reset_forgets_the_previous_object() {
        let vectors = Vectors::load();
        let first = &vectors.inputs["random-20MiB"];
        let second = &vectors.inputs["lines-12MiB"];
        for name in [
            "DYNAMIC-128K-BUZHASH",
            "DYNAMIC-128K-RABINKARP",
            "FIXED-128K",
        ] {
            let expected = chunk_lengths(new_splitter(name).unwrap().as_mut(), second);
            let mut reused = new_splitter(name).unwrap();
            // Stop mid-chunk, so both the window and the chunk length hold state.
            assert_eq!(reused.next_boundary(&first[..60_000]), None);
            reused.reset();
            assert_eq!(chunk_lengths(reused.as_mut(), second), expected, "{name}");
        }
    }

    #[test]
    fn chunks_stay_within_min_and_max() {
        let vectors = Vectors::load();
        let data = &vectors.inputs["random-40MiB-odd"];
        for (name, min, max) in [
            ("DYNAMIC-128K-BUZHASH", 64 << 10, 256 << 10),
            ("DYNAMIC-128K-RABINKARP", 64 << 10, 256 << 10),
            ("FIXED-128K", 128 << 10, 128 << 10),
        ] {
            let lengths = chunk_lengths(new_splitter(name).unwrap().as_mut(), data);
            let (last, full) = lengths.split_last().unwrap();
            assert!(full.iter().all(|l| (min..=max).contains(l)), "{name}");
            assert!(*last <= max);
            assert_eq!(lengths.iter().sum::<usize>(), data.len());
        }
    }

    #[test]
    fn empty_pieces_change_nothing() {
        for name in ALL_SPLITTERS {
            let mut splitter = new_splitter(name).unwrap();
            assert_eq!(splitter.next_boundary(&[]), None, "{name}");
        }
    }
}
