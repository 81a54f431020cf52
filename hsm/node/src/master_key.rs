//! The storage master key: read from `SEALGATE_MASTER_KEY` (64 hex digits) or from a key file
//! that is created with mode 0600 on first start and refused if others can read it.

use sealgate_hsm_core::crypto::MasterKey;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Environment variable that supplies the master key as 64 hex digits.
pub const MASTER_KEY_ENV: &str = "SEALGATE_MASTER_KEY";

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// The environment variable.
    Environment,
    /// An existing key file.
    File(PathBuf),
    /// A key file created now.
    Created(PathBuf),
}

/// Why the master key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterKeyError {
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error(
        "master key file {path} has mode {mode:o}; it must be readable by its owner only (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path is a link, a directory or another non-regular file.
    #[error("master key file {path} must be a regular file, not a link or directory")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The key is not 64 hex digits.
    #[error("master key in {origin} is not 64 hex digits (32 bytes)")]
    Malformed {
        /// The file or variable.
        origin: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MasterKeyError + '_ {
    move |source| MasterKeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A master key's 32 bytes, zeroized when dropped.
pub(crate) type RawKey = Zeroizing<[u8; 32]>;

fn parse(text: &str, origin: String) -> Result<Zeroizing<[u8; 32]>, MasterKeyError> {
    let malformed = || MasterKeyError::Malformed {
        origin: origin.clone(),
    };
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| malformed())?);
    let mut raw = Zeroizing::new([0u8; 32]);
    if bytes.len() != raw.len() {
        return Err(malformed());
    }
    raw.copy_from_slice(&bytes);
    Ok(raw)
}

fn key(raw: &[u8; 32], origin: impl FnOnce() -> String) -> Result<MasterKey, MasterKeyError> {
    MasterKey::from_bytes(raw).map_err(|_| MasterKeyError::Malformed { origin: origin() })
}

/// Loads the master key: from `env_value` (the value of [`MASTER_KEY_ENV`], if set), else from
/// `path`, creating that file with a fresh key (mode 0600) if it does not exist.
pub fn load_or_create_master_key(
    path: &Path,
    env_value: Option<&str>,
) -> Result<(MasterKey, MasterKeySource), MasterKeyError> {
    if let Some((raw, source)) = load_master_key_bytes(path, env_value)? {
        return Ok((key(&raw, || path.display().to_string())?, source));
    }
    let (master, raw) = MasterKey::generate().map_err(|_| MasterKeyError::Io {
        path: path.to_owned(),
        source: std::io::Error::other("random number generator failed"),
    })?;
    write_master_key(path, &raw)?;
    Ok((master, MasterKeySource::Created(path.to_owned())))
}

/// The master key's bytes from `env_value` or the file at `path`, or `None` if neither holds
/// one (the file does not exist). A node keeps them to hand the key to a joining node.
pub(crate) fn load_master_key_bytes(
    path: &Path,
    env_value: Option<&str>,
) -> Result<Option<(RawKey, MasterKeySource)>, MasterKeyError> {
    if let Some(value) = env_value {
        let raw = parse(value, MASTER_KEY_ENV.to_owned())?;
        return Ok(Some((raw, MasterKeySource::Environment)));
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => Err(MasterKeyError::NotAFile {
            path: path.to_owned(),
        }),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(MasterKeyError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = Zeroizing::new(fs::read_to_string(path).map_err(io(path))?);
            let raw = parse(&text, path.display().to_string())?;
            Ok(Some((raw, MasterKeySource::File(path.to_owned()))))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MasterKeyError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Writes `raw` as a new key file at `path` (mode 0600, never replacing a file), durably.
pub(crate) fn write_master_key(path: &Path, raw: &[u8; 32]) -> Result<(), MasterKeyError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut text = Zeroizing::new(hex::encode(raw));
    text.push('\n');
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_0600_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let (a, src) = load_or_create_master_key(&path, None).unwrap();
        assert_eq!(src, MasterKeySource::Created(path.clone()));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, src) = load_or_create_master_key(&path, None).unwrap();
        assert_eq!(src, MasterKeySource::File(path.clone()));
        assert_eq!(a.fingerprint(), b.fingerprint());
        // Readable by others: refused, with the fix in the message.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_master_key(&path, None).err().unwrap();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        // Malformed content.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            load_or_create_master_key(&path, None),
            Err(MasterKeyError::Malformed { .. })
        ));
        // A link to a key file is refused.
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            load_or_create_master_key(&link, None),
            Err(MasterKeyError::NotAFile { .. })
        ));
    }

    #[test]
    fn the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let hex_key = "11".repeat(32);
        let (k, src) = load_or_create_master_key(&path, Some(&hex_key)).unwrap();
        assert_eq!(src, MasterKeySource::Environment);
        assert_eq!(
            k.fingerprint(),
            MasterKey::from_bytes(&[0x11; 32]).unwrap().fingerprint()
        );
        assert!(
            !path.exists(),
            "no file is written when the key comes from the environment"
        );
        assert!(load_or_create_master_key(&path, Some("abcd")).is_err());
    }
}
