//! Store-and-keys layer (beside the store, importing only the foundation): secrets at rest: cluster
//! DSNs (which carry passwords) are stored encrypted with an AEAD (XChaCha20-Poly1305) under a
//! keyring of 32-byte keys, each with an id.
//!
//! Stored format: `enc:v1:<key id>:<base64 nonce>:<base64 ciphertext>`. The key id is bound to
//! the ciphertext as associated data. The first key of the keyring is the active one and
//! encrypts; every key decrypts what it encrypted, so rotating is adding a new key first and
//! keeping the old ones until every value was written again.
//!
//! Keys come from `PGSHIFT_SECRET_KEYS` (`id1:base64key,id2:base64key`, the first active) when
//! it is set, otherwise from `secret-keys.json` in the data directory, created on first start
//! with one random key, readable only by this user.
//!
//! A stored value without the `enc:` prefix was written by an older pgshift: it is returned as
//! is, and encrypted the next time it is written.
//!
//! Errors never carry plaintext or key material.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::base::DataDir;

/// The environment variable holding the keyring (read by `config`, handed to [`Secrets::load_with`]).
pub const ENV_VAR: &str = "PGSHIFT_SECRET_KEYS";
/// The keyring file in the data directory, used when the environment variable is unset.
pub const KEY_FILE: &str = "secret-keys.json";

const PREFIX: &str = "enc:";
const PREFIX_V1: &str = "enc:v1:";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{ENV_VAR} is malformed: {0}; expected id1:base64key,id2:base64key with 32-byte keys")]
    BadEnv(String),
    #[error("cannot read or write the secret key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret key file {path} is malformed: {reason}")]
    BadFile { path: String, reason: String },
    #[error("the keyring is empty")]
    NoKeys,
    #[error("key id {0:?} is not valid: use 1 to 64 letters, digits, '-', '_' or '.'")]
    BadKeyId(String),
    #[error("key id {0:?} appears more than once")]
    DuplicateKeyId(String),
    #[error("key {0:?} is not 32 bytes of base64")]
    BadKey(String),
    #[error("the stored secret is malformed")]
    Malformed,
    #[error("the stored secret uses an unsupported format version")]
    UnsupportedVersion,
    #[error("the stored secret was encrypted with key {0:?}, which is not configured ({ENV_VAR} or {KEY_FILE})")]
    UnknownKey(String),
    #[error("the stored secret cannot be decrypted with key {0:?}: wrong key or altered value")]
    Decrypt(String),
    #[error("encryption failed")]
    Encrypt,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// The keyring: the first key is active and encrypts; any key decrypts.
pub struct Secrets {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never the key material.
        f.debug_struct("Secrets")
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// The first key is active.
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    /// 32 bytes, standard base64.
    key: String,
}

fn check_id(id: &str) -> Result<(), SecretError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadKeyId(id.to_string()))
    }
}

fn decode_key(id: &str, b64: &str) -> Result<[u8; KEY_LEN], SecretError> {
    B64.decode(b64.trim())
        .ok()
        .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| SecretError::BadKey(id.to_string()))
}

impl Secrets {
    /// A keyring from `(id, key)` pairs; the first is active.
    pub fn new(keys: Vec<(String, [u8; KEY_LEN])>) -> Result<Self, SecretError> {
        if keys.is_empty() {
            return Err(SecretError::NoKeys);
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            check_id(&id)?;
            if out.iter().any(|k| k.id == id) {
                return Err(SecretError::DuplicateKeyId(id));
            }
            out.push(Key {
                cipher: XChaCha20Poly1305::new(&key.into()),
                id,
            });
        }
        Ok(Self { keys: out })
    }

    /// Keys from `env`, the value of `PGSHIFT_SECRET_KEYS` as the configuration read it, when
    /// set and not blank; otherwise from the key file in `data_dir`, created with one random key
    /// on first use.
    pub fn load_with(env: Option<&str>, data_dir: &Path) -> Result<Self, SecretError> {
        match env {
            Some(v) if !v.trim().is_empty() => Self::from_spec(v),
            _ => Self::load_or_create_file(data_dir),
        }
    }

    /// Parses `id1:base64key,id2:base64key` (the first active).
    pub fn from_spec(spec: &str) -> Result<Self, SecretError> {
        let mut keys = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let Some((id, key)) = entry.split_once(':') else {
                return Err(SecretError::BadEnv(format!(
                    "entry {} has no ':' between the key id and the key",
                    i + 1
                )));
            };
            let id = id.trim();
            check_id(id)?;
            keys.push((id.to_string(), decode_key(id, key)?));
        }
        if keys.is_empty() {
            return Err(SecretError::BadEnv("no keys".into()));
        }
        Self::new(keys)
    }

    fn load_or_create_file(data_dir: &Path) -> Result<Self, SecretError> {
        let path = data_dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let io = |source| SecretError::Io {
            path: shown.clone(),
            source,
        };
        if !path.exists() {
            let mut key = [0u8; KEY_LEN];
            rand::thread_rng().fill_bytes(&mut key);
            let file = KeyFile {
                keys: vec![KeyEntry {
                    id: "k1".into(),
                    key: B64.encode(key),
                }],
            };
            let body = serde_json::to_vec_pretty(&file).expect("key file serializes");
            match DataDir::new(data_dir).write_private(KEY_FILE, &body) {
                Ok(()) => tracing::info!(path = %shown, "created the secret key file"),
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        warn_if_readable_by_others(&path);
        let body = std::fs::read(&path).map_err(io)?;
        let bad = |reason: &str| SecretError::BadFile {
            path: shown.clone(),
            reason: reason.into(),
        };
        // serde's message could quote the file's content: keep it out.
        let file: KeyFile = serde_json::from_slice(&body)
            .map_err(|_| bad("expected {\"keys\": [{\"id\": …, \"key\": …}]}"))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in file.keys {
            check_id(&entry.id)?;
            let key = decode_key(&entry.id, &entry.key)?;
            keys.push((entry.id, key));
        }
        if keys.is_empty() {
            return Err(bad("it lists no keys"));
        }
        Self::new(keys)
    }

    /// The id of the key that encrypts.
    pub fn active_key_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Whether `stored` is in an encrypted format (as opposed to a plaintext older value).
    pub fn is_encrypted(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }

    /// Encrypts with the active key.
    pub fn encrypt(&self, plaintext: &str) -> Result<String, SecretError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: key.id.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Encrypt)?;
        Ok(format!(
            "{PREFIX_V1}{}:{}:{}",
            key.id,
            B64.encode(nonce),
            B64.encode(ciphertext)
        ))
    }

    /// Decrypts a stored value with whichever key encrypted it. A value without the `enc:`
    /// prefix (stored by an older pgshift) is returned as is.
    pub fn decrypt(&self, stored: &str) -> Result<String, SecretError> {
        if !Self::is_encrypted(stored) {
            return Ok(stored.to_string());
        }
        let rest = stored
            .strip_prefix(PREFIX_V1)
            .ok_or(SecretError::UnsupportedVersion)?;
        let mut parts = rest.splitn(3, ':');
        let (Some(id), Some(nonce), Some(ciphertext)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SecretError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SecretError::UnknownKey(id.to_string()))?;
        let nonce = B64.decode(nonce).map_err(|_| SecretError::Malformed)?;
        if nonce.len() != NONCE_LEN {
            return Err(SecretError::Malformed);
        }
        let ciphertext = B64.decode(ciphertext).map_err(|_| SecretError::Malformed)?;
        let plaintext = key
            .cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: key.id.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Decrypt(key.id.clone()))?;
        String::from_utf8(plaintext).map_err(|_| SecretError::Malformed)
    }
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the secret key file is readable by other users; chmod 600 it");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "postgresql://migrator:hunter2-secret@db.example:5432/postgres";

    fn key(byte: u8) -> [u8; KEY_LEN] {
        [byte; KEY_LEN]
    }

    fn ring(keys: &[(&str, u8)]) -> Secrets {
        Secrets::new(
            keys.iter()
                .map(|(id, b)| (id.to_string(), key(*b)))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let s = ring(&[("k1", 1)]);
        let stored = s.encrypt(DSN).unwrap();
        assert!(stored.starts_with("enc:v1:k1:"), "{stored}");
        assert!(!stored.contains("hunter2"));
        assert_eq!(s.decrypt(&stored).unwrap(), DSN);
        // A fresh nonce every time.
        assert_ne!(s.encrypt(DSN).unwrap(), stored);
    }

    #[test]
    fn wrong_key_fails() {
        let stored = ring(&[("k1", 1)]).encrypt(DSN).unwrap();
        let err = ring(&[("k1", 2)]).decrypt(&stored).unwrap_err();
        assert!(
            matches!(err, SecretError::Decrypt(ref id) if id == "k1"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"));
        let err = ring(&[("k2", 1)]).decrypt(&stored).unwrap_err();
        assert!(
            matches!(err, SecretError::UnknownKey(ref id) if id == "k1"),
            "{err}"
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = ring(&[("k1", 1)]);
        let stored_old = old.encrypt(DSN).unwrap();
        let rotated = ring(&[("k2", 2), ("k1", 1)]);
        assert_eq!(rotated.active_key_id(), "k2");
        assert_eq!(rotated.decrypt(&stored_old).unwrap(), DSN);
        let stored_new = rotated.encrypt(DSN).unwrap();
        assert!(stored_new.starts_with("enc:v1:k2:"));
        assert_eq!(rotated.decrypt(&stored_new).unwrap(), DSN);
        // The old keyring cannot read what the new key wrote.
        assert!(matches!(
            old.decrypt(&stored_new),
            Err(SecretError::UnknownKey(_))
        ));
    }

    #[test]
    fn tampered_values_fail() {
        let s = ring(&[("k1", 1), ("k2", 1)]);
        let stored = s.encrypt(DSN).unwrap();
        let (head, ct) = stored.rsplit_once(':').unwrap();
        let mut bytes = B64.decode(ct).unwrap();
        bytes[0] ^= 1;
        let flipped = format!("{head}:{}", B64.encode(&bytes));
        assert!(matches!(s.decrypt(&flipped), Err(SecretError::Decrypt(_))));
        // Relabelled to another key with the same material: the key id is authenticated.
        let relabelled = stored.replacen("enc:v1:k1:", "enc:v1:k2:", 1);
        assert!(matches!(
            s.decrypt(&relabelled),
            Err(SecretError::Decrypt(_))
        ));
        let truncated = &stored[..stored.len() - 4];
        assert!(s.decrypt(truncated).is_err());
        for bad in ["enc:v1:k1", "enc:v1:k1:!!:AAAA", "enc:v1:k1:AAAA:AAAA"] {
            assert!(
                matches!(s.decrypt(bad), Err(SecretError::Malformed)),
                "{bad}"
            );
        }
        assert!(matches!(
            s.decrypt("enc:v9:k1:a:b"),
            Err(SecretError::UnsupportedVersion)
        ));
    }

    #[test]
    fn plaintext_from_older_versions_is_accepted() {
        let s = ring(&[("k1", 1)]);
        assert_eq!(s.decrypt(DSN).unwrap(), DSN);
        assert!(!Secrets::is_encrypted(DSN));
        assert!(Secrets::is_encrypted(&s.encrypt(DSN).unwrap()));
    }

    #[test]
    fn keys_from_the_environment_value() {
        let spec = format!("new:{},old:{}", B64.encode(key(2)), B64.encode(key(1)));
        let s = Secrets::from_spec(&spec).unwrap();
        assert_eq!(s.key_ids(), ["new", "old"]);
        let stored_old = ring(&[("old", 1)]).encrypt(DSN).unwrap();
        assert_eq!(s.decrypt(&stored_old).unwrap(), DSN);

        let short = B64.encode([7u8; 16]);
        for bad in [
            "nocolon".to_string(),
            format!("k1:{short}"),
            "k1:not base64!".to_string(),
            format!("bad id:{}", B64.encode(key(1))),
            format!("k1:{0},k1:{0}", B64.encode(key(1))),
            ",".to_string(),
        ] {
            let err = Secrets::from_spec(&bad).unwrap_err();
            assert!(!err.to_string().contains(&short), "{err}");
        }
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("pgshift-secrets-{}", uuid::Uuid::new_v4()));
        let a = Secrets::load_with(None, &dir).unwrap();
        let stored = a.encrypt(DSN).unwrap();
        let b = Secrets::load_with(Some("  "), &dir).unwrap();
        assert_eq!(b.decrypt(&stored).unwrap(), DSN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The environment wins over the file.
        let env = format!("e1:{}", B64.encode(key(3)));
        let c = Secrets::load_with(Some(&env), &dir).unwrap();
        assert_eq!(c.active_key_id(), "e1");
        assert!(format!("{c:?}").contains("e1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
