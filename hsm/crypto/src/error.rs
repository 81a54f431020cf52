//! The one error type of the crypto crate.

/// Why a cryptographic operation failed.
///
/// Messages never contain key material or the data being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Key bytes (PKCS#8, SubjectPublicKeyInfo or raw secret) could not be parsed or are not
    /// acceptable for the stated key type.
    #[error("key rejected: {0}")]
    KeyRejected(&'static str),
    /// The mechanism does not apply to this key (an ECDSA mechanism on an RSA key, say).
    #[error("mechanism {mechanism} cannot be used with a {key} key")]
    MechanismMismatch {
        /// The mechanism that was asked for.
        mechanism: &'static str,
        /// The key type it was asked of.
        key: &'static str,
    },
    /// A combination of parameters that this HSM does not offer.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// An input had a length outside what the operation accepts.
    #[error("invalid length of {what}: {actual} bytes (allowed: {allowed})")]
    InvalidLength {
        /// Which input.
        what: &'static str,
        /// Its length in bytes.
        actual: usize,
        /// The lengths that are accepted, in words.
        allowed: &'static str,
    },
    /// A signature or MAC did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// Decryption failed: wrong key, modified ciphertext, tag or padding.
    #[error("decryption failed: ciphertext, tag, label or key do not match")]
    DecryptFailed,
    /// Unwrapping failed: wrong key or modified wrapped bytes.
    #[error("unwrap failed: the wrapped key does not authenticate under this unwrapping key")]
    UnwrapFailed,
    /// A sealed blob from the store could not be opened (wrong master key or modified blob).
    #[error("sealed data could not be opened: wrong master key or modified data")]
    UnsealFailed,
    /// A password that breaks the length rules.
    #[error("password must be {min} to {max} characters long")]
    PasswordLength {
        /// Minimum number of characters.
        min: usize,
        /// Maximum number of characters.
        max: usize,
    },
    /// A stored password hash that is not a valid argon2 PHC string.
    #[error("stored password hash is malformed")]
    MalformedPasswordHash,
    /// The random number generator or another primitive failed internally.
    #[error("internal cryptographic failure")]
    Internal,
}

impl From<aws_lc_rs::error::Unspecified> for CryptoError {
    fn from(_: aws_lc_rs::error::Unspecified) -> Self {
        Self::Internal
    }
}
