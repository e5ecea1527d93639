//! Store-and-keys layer (beside the store, importing only the foundation): bearer tokens, JWTs
//! signed (HS256) with a key kept in the data directory. The key file also
//! names this server, and tokens carry that name as issuer, so a token made for another server
//! is refused even if it were signed with a key of the same length.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::base::DataDir;
/// Roles belong to the foundation (the store keeps them too); this is their public path.
pub use crate::base::Role;

/// The claims pgshift puts in a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub iat: i64,
    /// Not valid before this time (tokens issued before pgshift set it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    pub jti: String,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    server_id: String,
    secret: String,
}

/// The server's signing key.
pub struct Keys {
    server_id: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the key file {path} is malformed; remove it to create a new one (existing tokens stop working)")]
    Malformed { path: String },
}

/// The token signing key's file in the data directory.
pub const KEY_FILE: &str = "server-key.json";

impl Keys {
    /// Loads the key from `data_dir`, creating it (readable only by this user) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, KeyError> {
        let path = data_dir.join(KEY_FILE);
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let mut secret = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut secret);
            let file = KeyFile {
                server_id: Uuid::new_v4().to_string(),
                secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
            };
            let body = serde_json::to_vec_pretty(&file).expect("key file serializes");
            DataDir::new(data_dir)
                .write_private(KEY_FILE, &body)
                .map_err(io)?;
        }
        let body = std::fs::read(&path).map_err(io)?;
        let malformed = || KeyError::Malformed {
            path: path.display().to_string(),
        };
        let file: KeyFile = serde_json::from_slice(&body).map_err(|_| malformed())?;
        if file.secret.len() < 64 {
            return Err(malformed());
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(file.secret.as_bytes()),
            decoding: DecodingKey::from_secret(file.secret.as_bytes()),
            server_id: file.server_id,
        })
    }

    /// Issues a token for `subject` with `role`, valid for `ttl`.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> String {
        self.issue_with_claims(subject, role, ttl).0
    }

    /// Issues a token and returns its claims too (its id and expiry), for the token record.
    pub fn issue_with_claims(&self, subject: &str, role: Role, ttl: Duration) -> (String, Claims) {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: subject.to_string(),
            role,
            iss: self.server_id.clone(),
            iat: now,
            nbf: Some(now),
            exp: now + ttl.as_secs() as i64,
            jti: Uuid::new_v4().to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }

    /// Verifies signature (HS256 only: `alg: none` and others are refused), expiry, not-before
    /// and issuer. Whether the token's id is recorded (and not revoked) is the caller's check.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&self.server_id]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_tokens_fail() {
        let a = tempdir("a");
        let b = tempdir("b");
        let keys = Keys::load_or_create(&a).unwrap();
        let other = Keys::load_or_create(&b).unwrap();
        let token = keys.issue("ci", Role::Operator, Duration::from_secs(60));
        assert_eq!(keys.verify(&token).unwrap().role, Role::Operator);
        assert!(other.verify(&token).is_none());
        assert!(keys.verify(&format!("{token}x")).is_none());
        // Same key loaded again verifies the same token.
        assert!(Keys::load_or_create(&a).unwrap().verify(&token).is_some());
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pgshift-keys-{tag}-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
