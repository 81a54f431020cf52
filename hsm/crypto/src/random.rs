//! Random bytes from aws-lc's DRBG.

use crate::error::CryptoError;
use zeroize::Zeroizing;

/// The most random bytes one request may ask for.
pub const MAX_RANDOM_LEN: usize = 64 * 1024;

/// Returns `len` random bytes (at most [`MAX_RANDOM_LEN`]).
pub fn random_bytes(len: usize) -> Result<Vec<u8>, CryptoError> {
    if len > MAX_RANDOM_LEN {
        return Err(CryptoError::InvalidLength {
            what: "random request",
            actual: len,
            allowed: "at most 65536 bytes",
        });
    }
    let mut out = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut out)?;
    Ok(out)
}

/// Returns an array of random bytes (identifiers, IVs, salts).
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out)?;
    Ok(out)
}

/// Random bytes for new key material, zeroized on drop.
pub(crate) fn random_secret(len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    aws_lc_rs::rand::fill(&mut out)?;
    Ok(out)
}
