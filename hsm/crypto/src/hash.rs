//! Digests.

use crate::alg::HashAlg;

/// Computes the digest of `data` with `alg`.
pub fn digest(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(alg.digest_alg(), data)
        .as_ref()
        .to_vec()
}

/// The first three bytes of `bytes` (zeros where it is shorter): the width of a key check value.
pub(crate) fn first3(bytes: &[u8]) -> [u8; 3] {
    let mut out = [0u8; 3];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // FIPS 180 "abc" vectors.
        assert_eq!(
            hex::encode(digest(HashAlg::Sha1, b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex::encode(digest(HashAlg::Sha224, b"abc")),
            "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
        );
        assert_eq!(
            hex::encode(digest(HashAlg::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        for h in [HashAlg::Sha384, HashAlg::Sha512] {
            assert_eq!(digest(h, b"abc").len(), h.output_len());
        }
    }
}
