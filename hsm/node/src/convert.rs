//! Translation between the wire protocol's plain data and the engine's types, and of engine
//! errors into protocol errors. The protocol crate knows nothing of the engine, so this is the
//! one place where the two meet.

use sealgate_hsm_core::crypto::{
    self as crypto, AesSize, KeyClass, KeySpec, OaepHash, RsaSize, SignMechanism,
};
use sealgate_hsm_core::{Approvals, KeyQuorum, QuorumService, TokenInfo};
use sealgate_hsm_core::{
    Attribute, AttributeChange, EngineError, KeyFilter, KeyInfo, KeyTemplate, Role, UserInfo,
};
use sealgate_hsm_proto as proto;
use sealgate_hsm_proto::{AttributeValue, ErrorKind};

fn invalid(message: impl Into<String>) -> proto::Error {
    proto::Error::new(ErrorKind::InvalidInput, message)
}

/// A key specification, checked against what the HSM supports.
pub(crate) fn key_spec(spec: proto::KeySpec) -> Result<KeySpec, proto::Error> {
    Ok(match spec {
        proto::KeySpec::Rsa { bits } => KeySpec::Rsa(
            RsaSize::from_bits(bits.into())
                .ok_or_else(|| invalid("RSA keys are 2048, 3072 or 4096 bits"))?,
        ),
        proto::KeySpec::Ec(curve) => KeySpec::Ec(self::curve(curve)),
        proto::KeySpec::Ed25519 => KeySpec::Ed25519,
        proto::KeySpec::Aes { bits } => KeySpec::Aes(
            AesSize::from_len(usize::from(bits) / 8)
                .filter(|_| bits % 8 == 0)
                .ok_or_else(|| invalid("AES keys are 128, 192 or 256 bits"))?,
        ),
        proto::KeySpec::GenericSecret { bytes } => KeySpec::GenericSecret(bytes),
    })
}

fn curve(curve: proto::Curve) -> crypto::Curve {
    match curve {
        proto::Curve::P256 => crypto::Curve::P256,
        proto::Curve::P384 => crypto::Curve::P384,
        proto::Curve::P521 => crypto::Curve::P521,
    }
}

pub(crate) fn hash(hash: proto::HashAlg) -> crypto::HashAlg {
    match hash {
        proto::HashAlg::Sha1 => crypto::HashAlg::Sha1,
        proto::HashAlg::Sha224 => crypto::HashAlg::Sha224,
        proto::HashAlg::Sha256 => crypto::HashAlg::Sha256,
        proto::HashAlg::Sha384 => crypto::HashAlg::Sha384,
        proto::HashAlg::Sha512 => crypto::HashAlg::Sha512,
    }
}

fn oaep(hash: proto::OaepHash) -> OaepHash {
    match hash {
        proto::OaepHash::Sha1 => OaepHash::Sha1,
        proto::OaepHash::Sha256 => OaepHash::Sha256,
        proto::OaepHash::Sha384 => OaepHash::Sha384,
        proto::OaepHash::Sha512 => OaepHash::Sha512,
    }
}

pub(crate) fn key_type(t: proto::KeyType) -> crypto::KeyType {
    match t {
        proto::KeyType::Rsa => crypto::KeyType::Rsa,
        proto::KeyType::Ec => crypto::KeyType::Ec,
        proto::KeyType::Ed25519 => crypto::KeyType::Ed25519,
        proto::KeyType::Aes => crypto::KeyType::Aes,
        proto::KeyType::GenericSecret => crypto::KeyType::GenericSecret,
    }
}

pub(crate) fn sign_mechanism(m: proto::SignMechanism) -> SignMechanism {
    match m {
        proto::SignMechanism::RsaPkcs1(h) => SignMechanism::RsaPkcs1(hash(h)),
        proto::SignMechanism::RsaPss(h) => SignMechanism::RsaPss(hash(h)),
        proto::SignMechanism::Ecdsa(h) => SignMechanism::Ecdsa(hash(h)),
        proto::SignMechanism::Ed25519 => SignMechanism::Ed25519,
        proto::SignMechanism::Hmac(h) => SignMechanism::Hmac(hash(h)),
    }
}

pub(crate) fn encrypt_mechanism(m: proto::EncryptMechanism) -> crypto::EncryptMechanism {
    match m {
        proto::EncryptMechanism::AesGcm => crypto::EncryptMechanism::AesGcm,
        proto::EncryptMechanism::RsaOaep(h) => crypto::EncryptMechanism::RsaOaep(oaep(h)),
    }
}

pub(crate) fn wrap_mechanism(
    m: proto::WrapMechanism,
) -> Result<crypto::WrapMechanism, proto::Error> {
    Ok(match m {
        proto::WrapMechanism::AesKeyWrap => crypto::WrapMechanism::AesKeyWrap,
        proto::WrapMechanism::AesKeyWrapPad => crypto::WrapMechanism::AesKeyWrapPad,
        proto::WrapMechanism::RsaOaep(h) => crypto::WrapMechanism::RsaOaep(oaep(h)),
        proto::WrapMechanism::RsaAes { oaep: h, aes_bits } => crypto::WrapMechanism::RsaAes {
            oaep: oaep(h),
            aes: AesSize::from_len(usize::from(aes_bits) / 8)
                .filter(|_| aes_bits % 8 == 0)
                .ok_or_else(|| invalid("RSA-AES temporary keys are 128, 192 or 256 bits"))?,
        },
    })
}

pub(crate) fn kdf(m: proto::KdfMechanism) -> crypto::KdfMechanism {
    match m {
        proto::KdfMechanism::Hkdf {
            hash: h,
            salt,
            info,
        } => crypto::KdfMechanism::Hkdf {
            hash: hash(h),
            salt,
            info,
        },
        proto::KdfMechanism::Sp800108Counter { hash: h, info } => {
            crypto::KdfMechanism::Sp800108Counter {
                hash: hash(h),
                info,
            }
        }
    }
}

pub(crate) fn role(role: proto::Role) -> Role {
    match role {
        proto::Role::PreCryptoOfficer => Role::PreCryptoOfficer,
        proto::Role::CryptoOfficer => Role::CryptoOfficer,
        proto::Role::CryptoUser => Role::CryptoUser,
        proto::Role::ApplianceUser => Role::ApplianceUser,
    }
}

pub(crate) fn role_out(role: Role) -> proto::Role {
    match role {
        Role::PreCryptoOfficer => proto::Role::PreCryptoOfficer,
        Role::CryptoOfficer => proto::Role::CryptoOfficer,
        Role::CryptoUser => proto::Role::CryptoUser,
        Role::ApplianceUser => proto::Role::ApplianceUser,
    }
}

/// A creation template from `name=value` attributes.
pub(crate) fn template(attributes: &[AttributeValue]) -> Result<KeyTemplate, proto::Error> {
    let mut template = KeyTemplate::default();
    for a in attributes {
        template
            .set(&a.name, &a.value)
            .map_err(|e| invalid(format!("attribute {}: {e}", a.name)))?;
    }
    Ok(template)
}

/// A new key's quorum values and first users.
pub(crate) type CreationOptions = (KeyQuorum, Vec<String>);

/// Creation options among a new key's attributes: `quorum-usage=M`, `quorum-management=M` and
/// `share=USER` (repeatable), which fix the key's quorum values and its first users when it is
/// created (CloudHSM's `--use-key-quorum-value`, `--manage-key-quorum-value`,
/// `--share-crypto-users`). Returns them (none when none is given) and the other attributes.
pub(crate) fn creation_options(
    attributes: &[AttributeValue],
) -> Result<(Option<CreationOptions>, Vec<AttributeValue>), proto::Error> {
    let mut quorum = KeyQuorum {
        usage: 1,
        management: 1,
    };
    let (mut share, mut rest, mut any) = (Vec::new(), Vec::new(), false);
    for a in attributes {
        let value = || {
            a.value.parse::<u8>().map_err(|_| {
                invalid(format!(
                    "attribute {}: expected a quorum value 1 to {}",
                    a.name,
                    sealgate_hsm_core::MAX_QUORUM
                ))
            })
        };
        match a.name.as_str() {
            "quorum-usage" => quorum.usage = value()?,
            "quorum-management" => quorum.management = value()?,
            "share" => share.push(a.value.clone()),
            _ => {
                rest.push(a.clone());
                continue;
            }
        }
        any = true;
    }
    Ok((any.then_some((quorum, share)), rest))
}

/// A quorum service from the protocol's.
pub(crate) fn quorum_service(service: proto::QuorumService) -> QuorumService {
    match service {
        proto::QuorumService::User => QuorumService::User,
        proto::QuorumService::Quorum => QuorumService::Quorum,
        proto::QuorumService::KeyManagement => QuorumService::KeyManagement,
        proto::QuorumService::KeyUsage => QuorumService::KeyUsage,
    }
}

/// A quorum service for the protocol.
pub(crate) fn quorum_service_out(service: QuorumService) -> proto::QuorumService {
    match service {
        QuorumService::User => proto::QuorumService::User,
        QuorumService::Quorum => proto::QuorumService::Quorum,
        QuorumService::KeyManagement => proto::QuorumService::KeyManagement,
        QuorumService::KeyUsage => proto::QuorumService::KeyUsage,
    }
}

/// A token for the protocol.
pub(crate) fn quorum_token(token: TokenInfo, hsm_id: u32) -> proto::QuorumToken {
    proto::QuorumToken {
        id: token.id,
        hsm_id,
        service: quorum_service_out(token.service),
        key: token.key.map(|k| k.0),
        user: token.user,
        approval_data: token.approval_data,
        expires_ms: token.expires.0,
    }
}

/// Approvals from the protocol's.
pub(crate) fn approvals(approval: proto::Approval) -> Approvals {
    Approvals {
        token: approval.token,
        signatures: approval
            .signatures
            .into_iter()
            .map(|s| (s.user, s.signature))
            .collect(),
    }
}

/// Attribute changes from `name=value` attributes.
pub(crate) fn changes(attributes: &[AttributeValue]) -> Result<Vec<AttributeChange>, proto::Error> {
    attributes
        .iter()
        .map(|a| {
            AttributeChange::parse(&a.name, &a.value)
                .map_err(|e| invalid(format!("attribute {}: {e}", a.name)))
        })
        .collect()
}

fn parse_bool(name: &str, value: &str) -> Result<bool, proto::Error> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(format!("filter {name}: expected true or false"))),
    }
}

/// A key search filter from `name=value` attributes.
pub(crate) fn filter(attributes: &[AttributeValue]) -> Result<KeyFilter, proto::Error> {
    let mut f = KeyFilter::default();
    for a in attributes {
        let (name, value) = (a.name.as_str(), a.value.as_str());
        let flag = |slot: &mut Option<bool>| -> Result<(), proto::Error> {
            *slot = Some(parse_bool(name, value)?);
            Ok(())
        };
        match name {
            "class" => {
                f.class = Some(match value {
                    "public-key" => KeyClass::PublicKey,
                    "private-key" => KeyClass::PrivateKey,
                    "secret-key" => KeyClass::SecretKey,
                    _ => {
                        return Err(invalid(
                            "filter class: expected public-key, private-key or secret-key",
                        ));
                    }
                });
            }
            "key-type" => {
                let t: proto::KeyType = value
                    .parse()
                    .map_err(|e| invalid(format!("filter key-type: {e}")))?;
                f.key_type = Some(key_type(t));
            }
            "label" => f.label = Some(value.to_owned()),
            "id" => f.id = Some(value.as_bytes().to_vec()),
            "token" => flag(&mut f.token)?,
            "sign" => flag(&mut f.sign)?,
            "verify" => flag(&mut f.verify)?,
            "encrypt" => flag(&mut f.encrypt)?,
            "decrypt" => flag(&mut f.decrypt)?,
            "wrap" => flag(&mut f.wrap)?,
            "unwrap" => flag(&mut f.unwrap)?,
            "extractable" => flag(&mut f.extractable)?,
            "trusted" => flag(&mut f.trusted)?,
            _ => {
                return Err(invalid(format!(
                    "cannot filter on {name:?}; filters: class key-type label id token sign \
                     verify encrypt decrypt wrap unwrap extractable trusted"
                )));
            }
        }
    }
    Ok(f)
}

pub(crate) fn key_info(info: KeyInfo) -> proto::KeyInfo {
    proto::KeyInfo {
        handle: info.handle.0,
        uid: info.uid.to_string(),
        owner: info.owner.0,
        owner_name: info.owner_name,
        shared_with: info.shared_with.into_iter().map(|(_, name)| name).collect(),
        attributes: Attribute::ALL
            .into_iter()
            .map(|a| AttributeValue::new(a.name(), info.attributes.value_text(a)))
            .collect(),
    }
}

pub(crate) fn user_info(u: UserInfo) -> proto::UserInfo {
    proto::UserInfo {
        id: u.id.0,
        name: u.name,
        role: role_out(u.role),
        locked: u.locked,
        failed_logins: u.failed_logins,
        built_in: u.built_in,
    }
}

/// The protocol error for an engine error: its kind decides what the client does next; the
/// message is the engine's.
pub(crate) fn error(e: &EngineError) -> proto::Error {
    use EngineError as E;
    let kind = match e {
        E::NotInitialized | E::AlreadyInitialized | E::AlreadyActivated | E::NotActivated => {
            ErrorKind::WrongClusterState
        }
        E::UnknownSession(_) | E::NotLoggedIn => ErrorKind::NotLoggedIn,
        E::AlreadyLoggedIn => ErrorKind::AlreadyLoggedIn,
        E::LoginFailed | E::ApplianceLogin => ErrorKind::LoginFailed,
        E::UserLocked { .. } => ErrorKind::UserLocked,
        E::PermissionDenied { .. }
        | E::NotKeyOwner { .. }
        | E::KeyUsageNotAllowed { .. }
        | E::NotExtractable { .. }
        | E::NotDestroyable { .. }
        | E::WrapWithTrustedRequired { .. }
        | E::BuiltInUser { .. }
        | E::CannotDeleteSelf
        | E::LastCryptoOfficer { .. }
        | E::UserOwnsKeys { .. } => ErrorKind::PermissionDenied,
        E::UserNotFound { .. } | E::KeyNotFound { .. } => ErrorKind::NotFound,
        E::UserExists { .. } | E::ObjectExists => ErrorKind::AlreadyExists,
        E::TooManySessions { .. } | E::LimitReached { .. } => ErrorKind::LimitReached,
        E::Crypto(crypto::CryptoError::BadSignature) => ErrorKind::VerifyFailed,
        E::Corrupt(_) => ErrorKind::Unavailable,
        E::Quorum(_) | E::QuorumRequired { .. } => ErrorKind::QuorumFailed,
        _ => ErrorKind::InvalidInput,
    };
    proto::Error::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sign_mechanism_and_spec_maps() {
        assert_eq!(
            sign_mechanism(proto::SignMechanism::Ecdsa(proto::HashAlg::Sha256)),
            SignMechanism::Ecdsa(crypto::HashAlg::Sha256)
        );
        assert!(key_spec(proto::KeySpec::Rsa { bits: 1024 }).is_err());
        assert!(key_spec(proto::KeySpec::Aes { bits: 100 }).is_err());
        assert_eq!(
            key_spec(proto::KeySpec::Aes { bits: 256 }),
            Ok(KeySpec::Aes(AesSize::Aes256))
        );
    }

    #[test]
    fn filters_and_templates_name_bad_attributes() {
        let err = filter(&[AttributeValue::new("colour", "red")]).unwrap_err();
        assert!(err.message.contains("colour"), "{err}");
        let err = template(&[AttributeValue::new("sign", "maybe")]).unwrap_err();
        assert!(err.message.contains("sign"), "{err}");
        let f = filter(&[
            AttributeValue::new("label", "web"),
            AttributeValue::new("sign", "true"),
        ])
        .expect("valid");
        assert_eq!(f.label.as_deref(), Some("web"));
        assert_eq!(f.sign, Some(true));
    }
}
