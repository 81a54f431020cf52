//! Key attributes (CloudHSM's set and names), creation templates, changes and search filters.

use crate::error::EngineError;
use crate::types::Role;
use sealgate_hsm_crypto::{KeyClass, KeySpec, KeyType};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest label, in bytes.
pub const MAX_LABEL_LEN: usize = 127;
/// Longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Attribute names, as CloudHSM's CLI spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Attribute {
    /// `class`: public-key, private-key or secret-key (read-only).
    Class,
    /// `key-type` (read-only).
    KeyType,
    /// `label`: free text, not unique (modifiable).
    Label,
    /// `id`: caller-chosen bytes, set at creation only.
    Id,
    /// `token`: persistent and replicated (true) or session-only (false); creation only.
    Token,
    /// `private`: always true (listing attributes needs a login).
    Private,
    /// `sign`.
    Sign,
    /// `verify`.
    Verify,
    /// `encrypt`.
    Encrypt,
    /// `decrypt`.
    Decrypt,
    /// `wrap`.
    Wrap,
    /// `unwrap`.
    Unwrap,
    /// `derive`.
    Derive,
    /// `extractable`: may leave wrapped; may go from true to false, never back.
    Extractable,
    /// `never-extractable` (read-only): extractable has always been false.
    NeverExtractable,
    /// `sensitive`: always true for private and secret keys.
    Sensitive,
    /// `always-sensitive` (read-only).
    AlwaysSensitive,
    /// `local` (read-only): generated inside the HSM.
    Local,
    /// `trusted`: set by a crypto officer only.
    Trusted,
    /// `wrap-with-trusted`: may be wrapped only by trusted keys; read-only once true.
    WrapWithTrusted,
    /// `destroyable`: may be deleted; may go from true to false, never back.
    Destroyable,
    /// `modifiable`: attributes may change; may go from true to false, never back.
    Modifiable,
    /// `check-value` (read-only): key check value.
    CheckValue,
}

impl Attribute {
    /// Every attribute.
    pub const ALL: [Self; 23] = [
        Self::Class,
        Self::KeyType,
        Self::Label,
        Self::Id,
        Self::Token,
        Self::Private,
        Self::Sign,
        Self::Verify,
        Self::Encrypt,
        Self::Decrypt,
        Self::Wrap,
        Self::Unwrap,
        Self::Derive,
        Self::Extractable,
        Self::NeverExtractable,
        Self::Sensitive,
        Self::AlwaysSensitive,
        Self::Local,
        Self::Trusted,
        Self::WrapWithTrusted,
        Self::Destroyable,
        Self::Modifiable,
        Self::CheckValue,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Class => "class",
            Self::KeyType => "key-type",
            Self::Label => "label",
            Self::Id => "id",
            Self::Token => "token",
            Self::Private => "private",
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Wrap => "wrap",
            Self::Unwrap => "unwrap",
            Self::Derive => "derive",
            Self::Extractable => "extractable",
            Self::NeverExtractable => "never-extractable",
            Self::Sensitive => "sensitive",
            Self::AlwaysSensitive => "always-sensitive",
            Self::Local => "local",
            Self::Trusted => "trusted",
            Self::WrapWithTrusted => "wrap-with-trusted",
            Self::Destroyable => "destroyable",
            Self::Modifiable => "modifiable",
            Self::CheckValue => "check-value",
        }
    }

    /// Looks an attribute up by its CLI name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether this is a boolean attribute that may change after creation (subject to the
    /// one-way rules in [`KeyAttributes`]).
    pub fn is_settable_flag(self) -> bool {
        matches!(
            self,
            Self::Sign
                | Self::Verify
                | Self::Encrypt
                | Self::Decrypt
                | Self::Wrap
                | Self::Unwrap
                | Self::Derive
                | Self::Extractable
                | Self::Sensitive
                | Self::Trusted
                | Self::WrapWithTrusted
                | Self::Destroyable
                | Self::Modifiable
        )
    }

    /// Whether a boolean attribute of this kind can ever be true on a key of `class` and
    /// `key_type` (usage flags only make sense where the mechanism exists).
    pub fn applies_to(self, class: KeyClass, key_type: KeyType) -> bool {
        use KeyClass::{PrivateKey, PublicKey, SecretKey};
        use KeyType::{Aes, GenericSecret, Rsa};
        match self {
            Self::Sign => matches!(
                (class, key_type),
                (PrivateKey, _) | (SecretKey, GenericSecret)
            ),
            Self::Verify => matches!(
                (class, key_type),
                (PublicKey, _) | (SecretKey, GenericSecret)
            ),
            Self::Encrypt | Self::Wrap => {
                matches!((class, key_type), (PublicKey, Rsa) | (SecretKey, Aes))
            }
            Self::Decrypt | Self::Unwrap => {
                matches!((class, key_type), (PrivateKey, Rsa) | (SecretKey, Aes))
            }
            Self::Derive => class == SecretKey,
            Self::Extractable | Self::WrapWithTrusted => class != PublicKey,
            _ => true,
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The attributes of one key object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttributes {
    /// Object class.
    pub class: KeyClass,
    /// Type and size (RSA modulus bits, EC curve, AES key length, secret length).
    pub spec: KeySpec,
    /// Free-text label.
    pub label: String,
    /// Caller-chosen id bytes.
    pub id: Vec<u8>,
    /// Persistent and replicated (true) or session-only (false).
    pub token: bool,
    /// May sign.
    pub sign: bool,
    /// May verify.
    pub verify: bool,
    /// May encrypt.
    pub encrypt: bool,
    /// May decrypt.
    pub decrypt: bool,
    /// May wrap other keys.
    pub wrap: bool,
    /// May unwrap other keys.
    pub unwrap: bool,
    /// May derive other keys.
    pub derive: bool,
    /// May be exported wrapped.
    pub extractable: bool,
    /// Extractable has never been true.
    pub never_extractable: bool,
    /// Value never readable in clear (always true for private and secret keys).
    pub sensitive: bool,
    /// Sensitive has always been true.
    pub always_sensitive: bool,
    /// Generated inside the HSM (not imported or unwrapped).
    pub local: bool,
    /// Marked trusted by a crypto officer.
    pub trusted: bool,
    /// May only be wrapped by trusted keys.
    pub wrap_with_trusted: bool,
    /// May be deleted.
    pub destroyable: bool,
    /// Attributes may change.
    pub modifiable: bool,
    /// Key check value (none for generic secrets).
    pub check_value: Option<[u8; 3]>,
}

impl KeyAttributes {
    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.spec.key_type()
    }

    /// Builds the attributes of a new object from a caller's template.
    ///
    /// Defaults: token, all usage flags false, **extractable false** for private and secret
    /// keys (public keys are always exportable), destroyable and modifiable true.
    pub(crate) fn from_template(
        class: KeyClass,
        spec: KeySpec,
        local: bool,
        template: &KeyTemplate,
        check_value: Option<[u8; 3]>,
    ) -> Result<Self, EngineError> {
        let key_type = spec.key_type();
        let label = template.label.clone().unwrap_or_default();
        check_label(&label)?;
        let id = template.id.clone().unwrap_or_default();
        if id.len() > MAX_ID_LEN {
            return Err(EngineError::InvalidInput {
                what: "id",
                reason: "at most 64 bytes",
            });
        }
        let flag =
            |attr: Attribute, value: Option<bool>, default: bool| -> Result<bool, EngineError> {
                let v = value.unwrap_or(default);
                if v && !attr.applies_to(class, key_type) {
                    return Err(EngineError::AttributeNotApplicable {
                        attribute: attr,
                        class,
                        key_type,
                    });
                }
                Ok(v)
            };
        let secret = class != KeyClass::PublicKey;
        let extractable = if secret {
            flag(Attribute::Extractable, template.extractable, false)?
        } else {
            true
        };
        Ok(Self {
            class,
            spec,
            label,
            id,
            token: template.token.unwrap_or(true),
            sign: flag(Attribute::Sign, template.sign, false)?,
            verify: flag(Attribute::Verify, template.verify, false)?,
            encrypt: flag(Attribute::Encrypt, template.encrypt, false)?,
            decrypt: flag(Attribute::Decrypt, template.decrypt, false)?,
            wrap: flag(Attribute::Wrap, template.wrap, false)?,
            unwrap: flag(Attribute::Unwrap, template.unwrap, false)?,
            derive: flag(Attribute::Derive, template.derive, false)?,
            extractable,
            never_extractable: secret && !extractable,
            sensitive: secret,
            always_sensitive: secret,
            local,
            trusted: false,
            wrap_with_trusted: flag(
                Attribute::WrapWithTrusted,
                template.wrap_with_trusted,
                false,
            )?,
            destroyable: template.destroyable.unwrap_or(true),
            modifiable: template.modifiable.unwrap_or(true),
            check_value,
        })
    }

    /// Checks attributes that arrive in a command against the rules
    /// [`KeyAttributes::from_template`] applies, so a replica never stores what a node would
    /// not have created.
    pub(crate) fn check_new(&self) -> Result<(), EngineError> {
        if self.trusted {
            return Err(EngineError::AttributeChangeRefused {
                attribute: Attribute::Trusted,
                reason: "keys are created untrusted; a crypto officer sets trusted later",
            });
        }
        self.check_new_or_inserted()
    }

    /// The rules every stored key's attributes obey (an inserted masked object may carry
    /// `trusted`, set by an officer before it was extracted).
    pub(crate) fn check_new_or_inserted(&self) -> Result<(), EngineError> {
        check_label(&self.label)?;
        if self.id.len() > MAX_ID_LEN {
            return Err(EngineError::InvalidInput {
                what: "id",
                reason: "at most 64 bytes",
            });
        }
        if self.spec.key_type().is_asymmetric() == (self.class == KeyClass::SecretKey) {
            return Err(EngineError::InvalidInput {
                what: "attributes",
                reason: "class and key type disagree",
            });
        }
        let secret = self.class != KeyClass::PublicKey;
        let consistent = self.sensitive == secret
            && (!self.always_sensitive || self.sensitive)
            && (!self.never_extractable || !self.extractable)
            && (secret || self.extractable);
        if !consistent {
            return Err(EngineError::InvalidInput {
                what: "attributes",
                reason: "sensitive and extractable flags are inconsistent",
            });
        }
        for attribute in Attribute::ALL {
            if attribute.is_settable_flag()
                && self.flag(attribute)
                && !attribute.applies_to(self.class, self.key_type())
                && !matches!(attribute, Attribute::Sensitive | Attribute::Extractable)
            {
                return Err(EngineError::AttributeNotApplicable {
                    attribute,
                    class: self.class,
                    key_type: self.key_type(),
                });
            }
        }
        Ok(())
    }

    /// The value of `attribute` as text, the way `key show` prints it.
    pub fn value_text(&self, attribute: Attribute) -> String {
        let b = |v: bool| if v { "true" } else { "false" }.to_owned();
        match attribute {
            Attribute::Class => self.class.to_string(),
            Attribute::KeyType => self.key_type().to_string(),
            Attribute::Label => self.label.clone(),
            Attribute::Id => self.id.iter().map(|x| format!("{x:02x}")).collect(),
            Attribute::Token => b(self.token),
            Attribute::Private => b(true),
            Attribute::Sign => b(self.sign),
            Attribute::Verify => b(self.verify),
            Attribute::Encrypt => b(self.encrypt),
            Attribute::Decrypt => b(self.decrypt),
            Attribute::Wrap => b(self.wrap),
            Attribute::Unwrap => b(self.unwrap),
            Attribute::Derive => b(self.derive),
            Attribute::Extractable => b(self.extractable),
            Attribute::NeverExtractable => b(self.never_extractable),
            Attribute::Sensitive => b(self.sensitive),
            Attribute::AlwaysSensitive => b(self.always_sensitive),
            Attribute::Local => b(self.local),
            Attribute::Trusted => b(self.trusted),
            Attribute::WrapWithTrusted => b(self.wrap_with_trusted),
            Attribute::Destroyable => b(self.destroyable),
            Attribute::Modifiable => b(self.modifiable),
            Attribute::CheckValue => match self.check_value {
                Some(v) => format!("0x{:02x}{:02x}{:02x}", v[0], v[1], v[2]),
                None => String::new(),
            },
        }
    }

    /// Checks that `change` may be made by a user of `role`, without making it.
    pub(crate) fn check_change(
        &self,
        change: &AttributeChange,
        role: Role,
    ) -> Result<(), EngineError> {
        let attribute = change.attribute();
        let needed = if attribute == Attribute::Trusted {
            Role::CryptoOfficer
        } else {
            Role::CryptoUser
        };
        if role != needed {
            return Err(EngineError::AttributeChangeRefused {
                attribute,
                reason: if attribute == Attribute::Trusted {
                    "only a crypto officer sets trusted"
                } else {
                    "only the owning crypto user changes this attribute"
                },
            });
        }
        if !self.modifiable {
            return Err(EngineError::AttributeChangeRefused {
                attribute,
                reason: "the key is not modifiable",
            });
        }
        let key_type = self.key_type();
        match *change {
            AttributeChange::Label(ref label) => check_label(label),
            AttributeChange::Flag(attr, value) => {
                if value && !attr.applies_to(self.class, key_type) {
                    return Err(EngineError::AttributeNotApplicable {
                        attribute: attr,
                        class: self.class,
                        key_type,
                    });
                }
                let current = self.flag(attr);
                let refused = |reason| {
                    Err(EngineError::AttributeChangeRefused {
                        attribute: attr,
                        reason,
                    })
                };
                match attr {
                    Attribute::Extractable if value && !current => {
                        refused("extractable can go from true to false, never back")
                    }
                    Attribute::WrapWithTrusted if !value && current => {
                        refused("wrap-with-trusted is read-only once true")
                    }
                    Attribute::Destroyable if value && !current => {
                        refused("destroyable can go from true to false, never back")
                    }
                    Attribute::Sensitive if !value && current => {
                        refused("private and secret keys are always sensitive")
                    }
                    Attribute::Sensitive if value && !current => {
                        refused("public keys are never sensitive")
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn flag(&self, attr: Attribute) -> bool {
        match attr {
            Attribute::Sign => self.sign,
            Attribute::Verify => self.verify,
            Attribute::Encrypt => self.encrypt,
            Attribute::Decrypt => self.decrypt,
            Attribute::Wrap => self.wrap,
            Attribute::Unwrap => self.unwrap,
            Attribute::Derive => self.derive,
            Attribute::Extractable => self.extractable,
            Attribute::Sensitive => self.sensitive,
            Attribute::Trusted => self.trusted,
            Attribute::WrapWithTrusted => self.wrap_with_trusted,
            Attribute::Destroyable => self.destroyable,
            Attribute::Modifiable => self.modifiable,
            Attribute::Token => self.token,
            Attribute::Local => self.local,
            Attribute::NeverExtractable => self.never_extractable,
            Attribute::AlwaysSensitive => self.always_sensitive,
            Attribute::Private => true,
            Attribute::Class | Attribute::KeyType | Attribute::Label | Attribute::Id => false,
            Attribute::CheckValue => false,
        }
    }

    /// Makes a change that [`KeyAttributes::check_change`] accepted.
    pub(crate) fn apply_change(&mut self, change: &AttributeChange) {
        match *change {
            AttributeChange::Label(ref label) => self.label = label.clone(),
            AttributeChange::Flag(attr, v) => match attr {
                Attribute::Sign => self.sign = v,
                Attribute::Verify => self.verify = v,
                Attribute::Encrypt => self.encrypt = v,
                Attribute::Decrypt => self.decrypt = v,
                Attribute::Wrap => self.wrap = v,
                Attribute::Unwrap => self.unwrap = v,
                Attribute::Derive => self.derive = v,
                // never-extractable stays as it was: it records whether extractable was ever true.
                Attribute::Extractable => self.extractable = v,
                Attribute::Trusted => self.trusted = v,
                Attribute::WrapWithTrusted => self.wrap_with_trusted = v,
                Attribute::Destroyable => self.destroyable = v,
                Attribute::Modifiable => self.modifiable = v,
                _ => {}
            },
        }
    }
}

fn check_label(label: &str) -> Result<(), EngineError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(EngineError::InvalidInput {
            what: "label",
            reason: "at most 127 bytes",
        });
    }
    if label.chars().any(char::is_control) {
        return Err(EngineError::InvalidInput {
            what: "label",
            reason: "control characters are not allowed",
        });
    }
    Ok(())
}

/// What a caller asks for when creating a key. `None` means the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyTemplate {
    /// `label`.
    pub label: Option<String>,
    /// `id`.
    pub id: Option<Vec<u8>>,
    /// `token` (default true: persistent and replicated).
    pub token: Option<bool>,
    /// `sign`.
    pub sign: Option<bool>,
    /// `verify`.
    pub verify: Option<bool>,
    /// `encrypt`.
    pub encrypt: Option<bool>,
    /// `decrypt`.
    pub decrypt: Option<bool>,
    /// `wrap`.
    pub wrap: Option<bool>,
    /// `unwrap`.
    pub unwrap: Option<bool>,
    /// `derive`.
    pub derive: Option<bool>,
    /// `extractable` (default false).
    pub extractable: Option<bool>,
    /// `wrap-with-trusted` (default false).
    pub wrap_with_trusted: Option<bool>,
    /// `destroyable` (default true).
    pub destroyable: Option<bool>,
    /// `modifiable` (default true).
    pub modifiable: Option<bool>,
}

impl KeyTemplate {
    /// Sets `name=value` from the CLI's `--attributes` syntax. Read-only attributes and
    /// `trusted` (set later by a crypto officer) are refused.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), EngineError> {
        let attribute = Attribute::from_name(name).ok_or(EngineError::InvalidInput {
            what: "attribute name",
            reason: "not a key attribute",
        })?;
        match attribute {
            Attribute::Label => self.label = Some(value.to_owned()),
            Attribute::Id => self.id = Some(value.as_bytes().to_vec()),
            _ => {
                let v = parse_bool(value)?;
                let slot = match attribute {
                    Attribute::Token => &mut self.token,
                    Attribute::Sign => &mut self.sign,
                    Attribute::Verify => &mut self.verify,
                    Attribute::Encrypt => &mut self.encrypt,
                    Attribute::Decrypt => &mut self.decrypt,
                    Attribute::Wrap => &mut self.wrap,
                    Attribute::Unwrap => &mut self.unwrap,
                    Attribute::Derive => &mut self.derive,
                    Attribute::Extractable => &mut self.extractable,
                    Attribute::WrapWithTrusted => &mut self.wrap_with_trusted,
                    Attribute::Destroyable => &mut self.destroyable,
                    Attribute::Modifiable => &mut self.modifiable,
                    _ => return Err(EngineError::AttributeReadOnly { attribute }),
                };
                *slot = Some(v);
            }
        }
        Ok(())
    }
}

fn parse_bool(value: &str) -> Result<bool, EngineError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(EngineError::InvalidInput {
            what: "attribute value",
            reason: "expected true or false",
        }),
    }
}

/// One change to a key's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttributeChange {
    /// New label.
    Label(String),
    /// A boolean attribute: one of the usage flags, extractable, sensitive, trusted,
    /// wrap-with-trusted, destroyable, modifiable.
    Flag(Attribute, bool),
}

impl AttributeChange {
    /// Parses `name` and `value`; read-only attributes are refused here.
    pub fn parse(name: &str, value: &str) -> Result<Self, EngineError> {
        let attribute = Attribute::from_name(name).ok_or(EngineError::InvalidInput {
            what: "attribute name",
            reason: "not a key attribute",
        })?;
        match attribute {
            Attribute::Label => Ok(Self::Label(value.to_owned())),
            a if a.is_settable_flag() => Ok(Self::Flag(attribute, parse_bool(value)?)),
            _ => Err(EngineError::AttributeReadOnly { attribute }),
        }
    }

    /// The attribute this change touches.
    pub fn attribute(&self) -> Attribute {
        match self {
            Self::Label(_) => Attribute::Label,
            Self::Flag(a, _) => *a,
        }
    }

    /// Checks the change is well formed: a [`AttributeChange::Flag`] must name a settable
    /// boolean attribute.
    pub(crate) fn check_form(&self) -> Result<(), EngineError> {
        match self {
            Self::Label(_) => Ok(()),
            Self::Flag(a, _) if a.is_settable_flag() => Ok(()),
            Self::Flag(a, _) => Err(EngineError::AttributeReadOnly { attribute: *a }),
        }
    }
}

/// A key search: every field that is `Some` must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFilter {
    /// Object class.
    pub class: Option<KeyClass>,
    /// Key type.
    pub key_type: Option<KeyType>,
    /// Exact label.
    pub label: Option<String>,
    /// Exact id.
    pub id: Option<Vec<u8>>,
    /// Token or session.
    pub token: Option<bool>,
    /// `sign`.
    pub sign: Option<bool>,
    /// `verify`.
    pub verify: Option<bool>,
    /// `encrypt`.
    pub encrypt: Option<bool>,
    /// `decrypt`.
    pub decrypt: Option<bool>,
    /// `wrap`.
    pub wrap: Option<bool>,
    /// `unwrap`.
    pub unwrap: Option<bool>,
    /// `extractable`.
    pub extractable: Option<bool>,
    /// `trusted`.
    pub trusted: Option<bool>,
}

impl KeyFilter {
    /// Whether `attrs` matches every set field.
    pub fn matches(&self, attrs: &KeyAttributes) -> bool {
        fn eq<T: PartialEq>(want: &Option<T>, have: &T) -> bool {
            want.as_ref().is_none_or(|w| w == have)
        }
        eq(&self.class, &attrs.class)
            && eq(&self.key_type, &attrs.key_type())
            && eq(&self.label, &attrs.label)
            && eq(&self.id, &attrs.id)
            && eq(&self.token, &attrs.token)
            && eq(&self.sign, &attrs.sign)
            && eq(&self.verify, &attrs.verify)
            && eq(&self.encrypt, &attrs.encrypt)
            && eq(&self.decrypt, &attrs.decrypt)
            && eq(&self.wrap, &attrs.wrap)
            && eq(&self.unwrap, &attrs.unwrap)
            && eq(&self.extractable, &attrs.extractable)
            && eq(&self.trusted, &attrs.trusted)
    }
}
