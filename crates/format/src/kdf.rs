//! Password-based key derivation for the format blob (spec §2.2) and HKDF-SHA256 (spec §3).

use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::{FormatError, Result};

/// Kopia's password KDFs, named as in the `keyAlgo` field of `kopia.repository`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyDerivationAlgorithm {
    /// scrypt with N = 65536, r = 8, p = 1 (the default for new repositories).
    Scrypt65536_8_1,
    /// PBKDF2-HMAC-SHA256 with 600 000 iterations.
    Pbkdf2Sha256_600000,
}

/// Both kopia KDFs refuse shorter salts (the salt is the repository's unique ID).
pub const MIN_SALT_LEN: usize = 16;

const SCRYPT_LOG_N: u8 = 16;
const SCRYPT_R: usize = 8;
const SCRYPT_P: usize = 1;
const PBKDF2_ITERATIONS: u32 = 600_000;

impl KeyDerivationAlgorithm {
    pub const ALL: &'static [KeyDerivationAlgorithm] = &[
        KeyDerivationAlgorithm::Scrypt65536_8_1,
        KeyDerivationAlgorithm::Pbkdf2Sha256_600000,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.name() == name)
            .ok_or_else(|| FormatError::Unsupported {
                what: "key derivation algorithm",
                name: name.to_string(),
            })
    }

    pub fn name(&self) -> &'static str {
        match self {
            KeyDerivationAlgorithm::Scrypt65536_8_1 => "scrypt-65536-8-1",
            KeyDerivationAlgorithm::Pbkdf2Sha256_600000 => "pbkdf2-sha256-600000",
        }
    }

    /// Derives the 32-byte format encryption key from the password and salt (the unique ID).
    pub fn derive(&self, password: &[u8], salt: &[u8]) -> Result<[u8; 32]> {
        if salt.len() < MIN_SALT_LEN {
            return Err(FormatError::malformed(
                "key derivation salt",
                format!("{} bytes, at least {MIN_SALT_LEN} required", salt.len()),
            ));
        }
        let mut key = [0u8; 32];
        match self {
            KeyDerivationAlgorithm::Scrypt65536_8_1 => {
                crate::scrypt_half_memory::scrypt(
                    password,
                    salt,
                    SCRYPT_LOG_N,
                    SCRYPT_R,
                    SCRYPT_P,
                    &mut key,
                );
            }
            KeyDerivationAlgorithm::Pbkdf2Sha256_600000 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, PBKDF2_ITERATIONS, &mut key);
            }
        }
        Ok(key)
    }
}

/// RFC 5869 HKDF-SHA256 (extract with `salt`, expand with `info`) filling `out`.
///
/// # Panics
/// If `out` is longer than 255 × 32 bytes, the RFC's limit; every kopia use is ≤ 32 bytes.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("HKDF output length is at most 8160 bytes");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kopia_hkdf_vector() {
        let mut out = [0u8; 32];
        hkdf_sha256(
            b"ABCDEFGHIJKLMNOP",
            b"0123456789012345",
            b"the-test-purpose",
            &mut out,
        );
        assert_eq!(
            hex::encode(out),
            "828769ee8969bc37f11dbaa32838f8db6c19daa6e3ae5f5eed2da2d94d8faddb"
        );
    }

    #[test]
    fn names_round_trip() {
        for a in KeyDerivationAlgorithm::ALL {
            assert_eq!(KeyDerivationAlgorithm::parse(a.name()).unwrap(), *a);
        }
        assert!(KeyDerivationAlgorithm::parse("").is_err());
        assert!(KeyDerivationAlgorithm::parse("testing-only-insecure").is_err());
    }

    #[test]
    fn derived_format_keys() {
        let unique_id: Vec<u8> = (0..32).collect();
        let scrypt = KeyDerivationAlgorithm::Scrypt65536_8_1
            .derive(b"password123", &unique_id)
            .unwrap();
        assert_eq!(
            hex::encode(scrypt),
            "f72c249029ffcaea3a9ac347046f3ad8186660db3bf1abdd22e96bb68bd85c8c"
        );
        let pbkdf2 = KeyDerivationAlgorithm::Pbkdf2Sha256_600000
            .derive(b"password123", &unique_id)
            .unwrap();
        assert_eq!(
            hex::encode(pbkdf2),
            "25260a6422059d849eec1aaf299de88424f68053ca1ae9c3aef131353cb764d5"
        );
    }

    #[test]
    fn empty_password_is_accepted() {
        for a in KeyDerivationAlgorithm::ALL {
            assert!(a.derive(b"", &[7u8; 16]).is_ok());
        }
    }

    #[test]
    fn short_salt_is_rejected() {
        for a in KeyDerivationAlgorithm::ALL {
            assert!(a.derive(b"pw", &[0u8; 15]).is_err());
        }
    }
}
