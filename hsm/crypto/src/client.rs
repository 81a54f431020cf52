//! The client's side of key import and export: wrapping key bytes the caller already holds so
//! the HSM can unwrap them, and opening a key the HSM exported under a key the caller holds.
//!
//! These functions deal in clear key bytes because the caller owns them already (a PEM file to
//! import, an export it asked for). The HSM engine never calls them: `hsm-core`'s clippy
//! configuration bans this module.

use crate::KeyMaterial;
use crate::alg::{KeyType, WrapMechanism};
use crate::asym::{PrivateKey, PublicKey};
use crate::error::CryptoError;
use crate::secret::SecretKey;
use crate::wrap::{self, UnwrapTarget, UnwrappingKey, WrappingKey};
use zeroize::Zeroizing;

/// A wrapping key on the client side.
pub enum ClientWrappingKey<'a> {
    /// An AES key (16 or 32 bytes) the client holds.
    Aes(&'a [u8]),
    /// The HSM's RSA public key (for RSA-OAEP and RSA-AES).
    RsaPublic(&'a PublicKey),
}

/// An unwrapping key on the client side.
pub enum ClientUnwrappingKey<'a> {
    /// An AES key (16 or 32 bytes) the client holds.
    Aes(&'a [u8]),
    /// An RSA private key the client holds, as PKCS#8 DER.
    RsaPkcs8(&'a [u8]),
}

fn material(key_type: KeyType, key_bytes: &[u8]) -> Result<KeyMaterial, CryptoError> {
    wrap::material_from_bytes(key_type, Zeroizing::new(key_bytes.to_vec()))
}

/// Wraps key bytes for import: PKCS#8 DER for RSA, EC and Ed25519 private keys, raw bytes for
/// AES keys and generic secrets. The bytes are checked to be a valid key of `key_type` first.
pub fn wrap_for_import(
    mechanism: WrapMechanism,
    wrapping: ClientWrappingKey<'_>,
    key_type: KeyType,
    key_bytes: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let payload = material(key_type, key_bytes)?;
    match wrapping {
        ClientWrappingKey::Aes(kek) => {
            let kek = SecretKey::from_bytes(KeyType::Aes, Zeroizing::new(kek.to_vec()))?;
            wrap::wrap_key(mechanism, WrappingKey::Secret(&kek), &payload)
        }
        ClientWrappingKey::RsaPublic(public) => {
            wrap::wrap_key(mechanism, WrappingKey::Public(public), &payload)
        }
    }
}

/// Opens a key exported by the HSM: returns PKCS#8 DER for private keys, raw bytes for secret
/// keys.
pub fn unwrap_export(
    mechanism: WrapMechanism,
    unwrapping: ClientUnwrappingKey<'_>,
    wrapped: &[u8],
    key_type: KeyType,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let target = UnwrapTarget { key_type };
    let opened = match unwrapping {
        ClientUnwrappingKey::Aes(kek) => {
            let kek = SecretKey::from_bytes(KeyType::Aes, Zeroizing::new(kek.to_vec()))?;
            wrap::unwrap_key(mechanism, UnwrappingKey::Secret(&kek), wrapped, target)?
        }
        ClientUnwrappingKey::RsaPkcs8(der) => {
            let key = PrivateKey::from_pkcs8(KeyType::Rsa, der)?;
            wrap::unwrap_key(mechanism, UnwrappingKey::Private(&key), wrapped, target)?
        }
    };
    match opened {
        KeyMaterial::Private(k) => k.to_pkcs8(),
        KeyMaterial::Secret(k) => Ok(Zeroizing::new(k.bytes().to_vec())),
    }
}

/// The public key inside a PKCS#8 private key the client holds (to check an import).
pub fn public_key_of_pkcs8(key_type: KeyType, der: &[u8]) -> Result<PublicKey, CryptoError> {
    Ok(PrivateKey::from_pkcs8(key_type, der)?.public_key().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::{AesSize, KeySpec, OaepHash};

    #[test]
    fn import_then_export_round_trip() {
        let kek = [7u8; 32];
        let secret = [9u8; 24];
        let wrapped = wrap_for_import(
            WrapMechanism::AesKeyWrap,
            ClientWrappingKey::Aes(&kek),
            KeyType::Aes,
            &secret,
        )
        .unwrap();
        let back = unwrap_export(
            WrapMechanism::AesKeyWrap,
            ClientUnwrappingKey::Aes(&kek),
            &wrapped,
            KeyType::Aes,
        )
        .unwrap();
        assert_eq!(&back[..], &secret);
        // Bytes that are not a key of the stated type are refused before wrapping.
        assert!(
            wrap_for_import(
                WrapMechanism::AesKeyWrapPad,
                ClientWrappingKey::Aes(&kek),
                KeyType::Ec,
                &secret
            )
            .is_err()
        );
        // RSA-AES with a private key that round-trips through PKCS#8.
        let rsa = KeyMaterial::generate(KeySpec::Rsa(crate::RsaSize::Rsa2048)).unwrap();
        let KeyMaterial::Private(rsa) = rsa else {
            panic!()
        };
        let pkcs8 = rsa.to_pkcs8().unwrap();
        let m = WrapMechanism::RsaAes {
            oaep: OaepHash::Sha256,
            aes: AesSize::Aes128,
        };
        let ec = KeyMaterial::generate(KeySpec::Ec(crate::Curve::P256)).unwrap();
        let KeyMaterial::Private(ec) = ec else {
            panic!()
        };
        let ec_der = ec.to_pkcs8().unwrap();
        let w = wrap_for_import(
            m,
            ClientWrappingKey::RsaPublic(rsa.public_key()),
            KeyType::Ec,
            &ec_der,
        )
        .unwrap();
        let out = unwrap_export(m, ClientUnwrappingKey::RsaPkcs8(&pkcs8), &w, KeyType::Ec).unwrap();
        assert_eq!(
            public_key_of_pkcs8(KeyType::Ec, &out).unwrap(),
            *ec.public_key()
        );
    }
}
