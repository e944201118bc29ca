//! scrypt (RFC 7914) that keeps only every second ROMix block and recomputes the odd ones when
//! they are read. The key is the same as standard scrypt's; the peak memory is half (32 MiB
//! instead of 64 MiB for kopia's N = 65536, r = 8) for about a quarter more time. Every command
//! derives the format key once, so this buffer sets the floor of kmover's peak RSS.

use sha2::Sha256;

const BLOCK_WORDS: usize = 16;

/// Derives `out.len()` bytes. `log_n` must be 1..=31 and `r`, `p` at least 1.
pub fn scrypt(password: &[u8], salt: &[u8], log_n: u8, r: usize, p: usize, out: &mut [u8]) {
    assert!(
        (1..=31).contains(&log_n) && r >= 1 && p >= 1,
        "scrypt parameters out of range"
    );
    let n = 1usize << log_n;
    let lane_bytes = 128 * r;
    let mut b = vec![0u8; lane_bytes * p];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, 1, &mut b);
    let mut x = vec![0u32; 32 * r];
    let mut scratch = RoMix::new(n, r);
    for lane in b.chunks_exact_mut(lane_bytes) {
        for (w, bytes) in x.iter_mut().zip(lane.chunks_exact(4)) {
            *w = u32::from_le_bytes(bytes.try_into().expect("4-byte chunk"));
        }
        scratch.mix(&mut x);
        for (w, bytes) in x.iter().zip(lane.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&w.to_le_bytes());
        }
    }
    pbkdf2::pbkdf2_hmac::<Sha256>(password, &b, 1, out);
}

struct RoMix {
    n: usize,
    block_words: usize,
    /// V_0, V_2, V_4, …: the even half of ROMix's table.
    even: Vec<u32>,
    next: Vec<u32>,
    odd: Vec<u32>,
}

impl RoMix {
    fn new(n: usize, r: usize) -> Self {
        let block_words = 32 * r;
        RoMix {
            n,
            block_words,
            even: vec![0u32; n.div_ceil(2) * block_words],
            next: vec![0u32; block_words],
            odd: vec![0u32; block_words],
        }
    }

    fn mix(&mut self, x: &mut Vec<u32>) {
        let bw = self.block_words;
        for i in 0..self.n {
            if i.is_multiple_of(2) {
                self.even[(i / 2) * bw..][..bw].copy_from_slice(x);
            }
            block_mix(x, &mut self.next);
            std::mem::swap(x, &mut self.next);
        }
        for _ in 0..self.n {
            let j = integerify(x) & (self.n - 1);
            let stored = &self.even[(j / 2) * bw..][..bw];
            if j.is_multiple_of(2) {
                xor_into(x, stored);
            } else {
                block_mix(stored, &mut self.odd);
                xor_into(x, &self.odd);
            }
            block_mix(x, &mut self.next);
            std::mem::swap(x, &mut self.next);
        }
    }
}

fn xor_into(dst: &mut [u32], src: &[u32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// The first word of the last 64-byte block; N is a power of two below 2^32, so the low word
/// is all of `Integerify(X) mod N` that matters.
fn integerify(x: &[u32]) -> usize {
    x[x.len() - BLOCK_WORDS] as usize
}

/// scryptBlockMix with Salsa20/8: even-indexed outputs first, then odd-indexed ones.
fn block_mix(input: &[u32], output: &mut [u32]) {
    let blocks = input.len() / BLOCK_WORDS;
    let half = blocks / 2;
    let mut t: [u32; BLOCK_WORDS] = input[input.len() - BLOCK_WORDS..]
        .try_into()
        .expect("one block");
    for (i, block) in input.chunks_exact(BLOCK_WORDS).enumerate() {
        for (a, b) in t.iter_mut().zip(block) {
            *a ^= b;
        }
        salsa20_8(&mut t);
        let dest = if i.is_multiple_of(2) {
            i / 2
        } else {
            half + i / 2
        };
        output[dest * BLOCK_WORDS..][..BLOCK_WORDS].copy_from_slice(&t);
    }
}

fn salsa20_8(b: &mut [u32; BLOCK_WORDS]) {
    let mut x = *b;
    macro_rules! quarter {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            x[$b] ^= x[$a].wrapping_add(x[$d]).rotate_left(7);
            x[$c] ^= x[$b].wrapping_add(x[$a]).rotate_left(9);
            x[$d] ^= x[$c].wrapping_add(x[$b]).rotate_left(13);
            x[$a] ^= x[$d].wrapping_add(x[$c]).rotate_left(18);
        };
    }
    for _ in 0..4 {
        quarter!(0, 4, 8, 12);
        quarter!(5, 9, 13, 1);
        quarter!(10, 14, 2, 6);
        quarter!(15, 3, 7, 11);
        quarter!(0, 1, 2, 3);
        quarter!(5, 6, 7, 4);
        quarter!(10, 11, 8, 9);
        quarter!(15, 12, 13, 14);
    }
    for (out, mixed) in b.iter_mut().zip(x) {
        *out = out.wrapping_add(mixed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive(password: &[u8], salt: &[u8], log_n: u8, r: usize, p: usize, len: usize) -> String {
        let mut out = vec![0u8; len];
        scrypt(password, salt, log_n, r, p, &mut out);
        hex::encode(out)
    }

    #[test]
    fn rfc7914_vectors() {
        assert_eq!(
            derive(b"", b"", 4, 1, 1, 64),
            "77d6576238657b203b19ca42c18a0497f16b4844e3074ae8dfdffa3fede21442\
             fcd0069ded0948f8326a753a0fc81f17e8d3e0fb2e0d3628cf35e20c38d18906"
        );
        assert_eq!(
            derive(b"password", b"NaCl", 10, 8, 16, 64),
            "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162\
             2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
        );
    }

    #[test]
    fn agrees_with_the_full_memory_crate() {
        for (log_n, r, p) in [(1u8, 1usize, 1usize), (3, 2, 3), (8, 8, 1), (11, 3, 2)] {
            for (password, salt) in [
                (&b"pw"[..], &b"0123456789abcdef"[..]),
                (b"", b"s"),
                (b"a longer password with spaces", b"another salt value"),
            ] {
                let params = ::scrypt::Params::new(log_n, r as u32, p as u32, 32).unwrap();
                let mut want = [0u8; 32];
                ::scrypt::scrypt(password, salt, &params, &mut want).unwrap();
                assert_eq!(
                    derive(password, salt, log_n, r, p, 32),
                    hex::encode(want),
                    "log_n={log_n} r={r} p={p}"
                );
            }
        }
    }
}
