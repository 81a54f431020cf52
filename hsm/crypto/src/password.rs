//! Passwords and their argon2id hashes.

use crate::error::CryptoError;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use zeroize::Zeroizing;

/// Fewest characters in a password (CloudHSM's current quota).
pub const MIN_PASSWORD_LEN: usize = 8;
/// Most characters in a password.
pub const MAX_PASSWORD_LEN: usize = 32;

/// A password in memory: zeroized on drop, no `Debug`, `Clone` or `Serialize`.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password as typed. No rules are checked: a login attempt with a password of any
    /// length simply fails; [`Password::check_policy`] applies the rules for new passwords.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// Checks the rules for a new password: 8 to 32 characters.
    pub fn check_policy(&self) -> Result<(), CryptoError> {
        let n = self.0.chars().count();
        if (MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
            Ok(())
        } else {
            Err(CryptoError::PasswordLength {
                min: MIN_PASSWORD_LEN,
                max: MAX_PASSWORD_LEN,
            })
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Self::new(s.to_owned())
    }
}

/// An argon2id hash of a password in PHC string format. Not the password, but still sealed at
/// rest, so it has no `Debug`.
pub struct PasswordHash(Zeroizing<String>);

impl PasswordHash {
    /// Hashes `password` with argon2id (19 MiB, 2 passes, 1 lane) and a random 16-byte salt.
    pub fn new(password: &Password) -> Result<Self, CryptoError> {
        let salt: [u8; 16] = crate::random::random_array()?;
        let hash = Argon2::default()
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map_err(|_| CryptoError::Internal)?;
        Ok(Self(Zeroizing::new(hash.to_string())))
    }

    /// Restores a hash from its PHC string (after unsealing it from the store).
    pub fn from_phc(phc: Zeroizing<Vec<u8>>) -> Result<Self, CryptoError> {
        let text = std::str::from_utf8(&phc).map_err(|_| CryptoError::MalformedPasswordHash)?;
        argon2::password_hash::phc::PasswordHash::new(text)
            .map_err(|_| CryptoError::MalformedPasswordHash)?;
        Ok(Self(Zeroizing::new(text.to_owned())))
    }

    /// The PHC string, for sealing.
    pub fn as_phc(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Checks `password` against this hash (argon2 compares in constant time).
    pub fn verify(&self, password: &Password) -> bool {
        Argon2::default()
            .verify_password(password.as_bytes(), self.0.as_str())
            .is_ok()
    }

    /// Spends the time of one verification without a hash to compare against.
    pub fn verify_dummy(password: &Password) {
        let salt = [0u8; 16];
        let _ = Argon2::default().hash_password_with_salt(password.as_bytes(), &salt);
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn hash_and_verify() {
        let p = Password::from("correct horse");
        let h = PasswordHash::new(&p).unwrap();
        assert!(h.as_phc().starts_with(b"$argon2id$"));
        assert!(h.verify(&p));
        assert!(!h.verify(&Password::from("correct horsE")));
        let again = PasswordHash::from_phc(Zeroizing::new(h.as_phc().to_vec())).unwrap();
        assert!(again.verify(&p));
        assert!(PasswordHash::from_phc(Zeroizing::new(b"nope".to_vec())).is_err());
        // Two hashes of one password differ (random salts).
        assert_ne!(PasswordHash::new(&p).unwrap().as_phc(), h.as_phc());
    }

    #[test]
    fn policy() {
        assert!(Password::from("1234567").check_policy().is_err());
        assert!(Password::from("12345678").check_policy().is_ok());
        assert!(
            Password::from("x".repeat(32).as_str())
                .check_policy()
                .is_ok()
        );
        assert!(
            Password::from("x".repeat(33).as_str())
                .check_policy()
                .is_err()
        );
        // Characters, not bytes.
        assert!(Password::from("ééééééééé").check_policy().is_ok());
    }
}
