//! Provider API keys at rest: AES-256-GCM under the operator's
//! `TOLLGATE_ENCRYPTION_KEY`.
//!
//! A key goes in as a [`ProviderKey`] and lands in `provider_keys` as
//! `(ciphertext, nonce, key_hint)`; it comes back out only through
//! [`load_provider_key`] (or `ProjectConfig::load`) with the same
//! [`EncryptionKey`]. Invariants:
//! - the plaintext is never stored, logged or printed: [`EncryptionKey`] and
//!   [`ProviderKey`] print `***`, and errors name the project and provider only;
//! - every encryption uses a fresh random 96-bit nonce;
//! - the associated data is `project_id (16 bytes) || provider`, so a row
//!   copied to another project, or to another provider, fails to decrypt;
//! - the hint keeps the last 4 characters only, and only of keys long enough
//!   that 4 characters give nothing useful away.

use crate::providers::ProviderKey;
use aes_gcm::aead::rand_core::RngCore as _;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Context as _;
use base64::Engine as _;
use schemas::ProjectId;
use sqlx::PgPool;
use std::fmt;
use std::path::Path;

/// The variable that holds the encryption key.
pub const ENCRYPTION_KEY_ENV: &str = "TOLLGATE_ENCRYPTION_KEY";
/// Where `tollgate up` keeps a generated key, relative to its directory.
pub const LOCAL_KEY_FILE: &str = ".tollgate/encryption.key";
/// Providers every project may hold a key for; custom providers come on top.
pub const BUILT_IN_PROVIDERS: [&str; 4] = ["openai", "anthropic", "gemini", "xai"];
/// Longest provider key accepted, in bytes.
pub const MAX_PROVIDER_KEY_BYTES: usize = 4096;
/// Keys shorter than this (in characters) get an empty hint.
const MIN_CHARS_FOR_HINT: usize = 16;
const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// Why a `TOLLGATE_ENCRYPTION_KEY` value was refused. The value itself is never
/// part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionKeyError {
    #[error("{ENCRYPTION_KEY_ENV} is empty: set it to 64 hex characters (e.g. `openssl rand -hex 32`) or the base64 of 32 random bytes")]
    Empty,
    #[error("{ENCRYPTION_KEY_ENV} has {0} hex characters; it needs exactly 64 (32 bytes), e.g. `openssl rand -hex 32`")]
    WrongHexLength(usize),
    #[error("{ENCRYPTION_KEY_ENV} is base64 of {0} bytes; it needs exactly 32 bytes (64 hex characters or 44 base64 characters)")]
    WrongByteLength(usize),
    #[error("{ENCRYPTION_KEY_ENV} is neither 64 hex characters nor base64 of 32 bytes")]
    Unreadable,
}

/// The 256-bit key that encrypts provider keys. `Debug` prints `***`; there is
/// no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; KEY_BYTES]);

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(***)")
    }
}

impl EncryptionKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        OsRng.fill_bytes(&mut bytes);
        EncryptionKey(bytes)
    }

    /// Reads `TOLLGATE_ENCRYPTION_KEY`'s value: 64 hex characters, or base64
    /// (standard or URL-safe, padded or not) of exactly 32 bytes. Surrounding
    /// whitespace is ignored.
    pub fn from_env_value(value: &str) -> Result<Self, EncryptionKeyError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(EncryptionKeyError::Empty);
        }
        let all_hex = value.bytes().all(|b| b.is_ascii_hexdigit());
        if all_hex && value.len() == 2 * KEY_BYTES {
            let bytes = hex::decode(value).map_err(|_| EncryptionKeyError::Unreadable)?;
            return Self::from_slice(&bytes);
        }
        match decode_base64(value) {
            Some(bytes) if bytes.len() == KEY_BYTES => Self::from_slice(&bytes),
            _ if all_hex => Err(EncryptionKeyError::WrongHexLength(value.len())),
            Some(bytes) => Err(EncryptionKeyError::WrongByteLength(bytes.len())),
            None => Err(EncryptionKeyError::Unreadable),
        }
    }

    fn from_slice(bytes: &[u8]) -> Result<Self, EncryptionKeyError> {
        let array: [u8; KEY_BYTES] = bytes
            .try_into()
            .map_err(|_| EncryptionKeyError::WrongByteLength(bytes.len()))?;
        Ok(EncryptionKey(array))
    }

    /// 64 lowercase hex characters, the form to write to a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }

    /// Encrypts `key` for `provider` of `project` under a fresh random nonce.
    pub fn seal(
        &self,
        project: ProjectId,
        provider: &str,
        key: &ProviderKey,
    ) -> anyhow::Result<Sealed> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(project, provider);
        let payload = Payload {
            msg: key.expose().as_bytes(),
            aad: &aad,
        };
        let ciphertext = self
            .cipher()
            .encrypt(&nonce, payload)
            .map_err(|_| anyhow::anyhow!("encrypting the {provider} key of project {project}"))?;
        Ok(Sealed {
            ciphertext,
            nonce: nonce.to_vec(),
        })
    }

    /// Decrypts what [`EncryptionKey::seal`] made for the same project and
    /// provider. Fails for another key, project or provider, or altered bytes.
    pub fn open(
        &self,
        project: ProjectId,
        provider: &str,
        sealed: &Sealed,
    ) -> Result<ProviderKey, DecryptError> {
        let fail = || DecryptError {
            project,
            provider: provider.to_owned(),
        };
        if sealed.nonce.len() != NONCE_BYTES {
            return Err(fail());
        }
        let aad = associated_data(project, provider);
        let payload = Payload {
            msg: &sealed.ciphertext,
            aad: &aad,
        };
        let plain = self
            .cipher()
            .decrypt(Nonce::from_slice(&sealed.nonce), payload)
            .map_err(|_| fail())?;
        String::from_utf8(plain)
            .map(ProviderKey::new)
            .map_err(|_| fail())
    }
}

/// A provider key as stored: ciphertext (with the GCM tag) and its nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
}

/// A stored key that does not decrypt. Names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored {provider} key of project {project} cannot be decrypted: {ENCRYPTION_KEY_ENV} is not the key it was stored with, or the row was altered or copied from another project; store the key again with `tollgate keys add`")]
pub struct DecryptError {
    pub project: ProjectId,
    pub provider: String,
}

fn decode_base64(value: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(value).ok())
}

fn associated_data(project: ProjectId, provider: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + provider.len());
    aad.extend_from_slice(project.0.as_bytes());
    aad.extend_from_slice(provider.as_bytes());
    aad
}

/// The encryption key to use: `env_value` (the value of
/// `TOLLGATE_ENCRYPTION_KEY`) when set and not blank, else the contents of
/// `local_file` (the key `tollgate up` generates) when that file exists, else
/// `None`. A value that is present but malformed is an error naming where it
/// came from.
pub fn resolve_encryption_key(
    env_value: Option<String>,
    local_file: &Path,
) -> anyhow::Result<Option<EncryptionKey>> {
    if let Some(value) = env_value.filter(|v| !v.trim().is_empty()) {
        return Ok(Some(EncryptionKey::from_env_value(&value)?));
    }
    let text = match std::fs::read_to_string(local_file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "reading {} ({ENCRYPTION_KEY_ENV} is unset)",
                    local_file.display()
                )
            })
        }
    };
    let key = EncryptionKey::from_env_value(&text).with_context(|| {
        format!(
            "{} holds no valid key ({ENCRYPTION_KEY_ENV} is unset, so it was used)",
            local_file.display()
        )
    })?;
    Ok(Some(key))
}

/// What is shown of a stored key: its last 4 characters, or nothing for keys
/// under 16 characters.
pub fn key_hint(key: &ProviderKey) -> String {
    let chars: Vec<char> = key.expose().chars().collect();
    if chars.len() < MIN_CHARS_FOR_HINT {
        return String::new();
    }
    chars[chars.len() - 4..].iter().collect()
}

/// Refuses empty, oversized or control-character keys, without quoting them.
fn check_key(key: &ProviderKey) -> anyhow::Result<()> {
    let text = key.expose();
    if text.trim().is_empty() {
        anyhow::bail!("the provider key is empty");
    }
    if text.len() > MAX_PROVIDER_KEY_BYTES {
        anyhow::bail!("the provider key is longer than {MAX_PROVIDER_KEY_BYTES} bytes");
    }
    if text.chars().any(char::is_control) {
        anyhow::bail!("the provider key contains control characters (a line break?)");
    }
    Ok(())
}

/// Refuses a provider that is neither built in nor a custom provider of `project`.
async fn check_provider(pool: &PgPool, project: ProjectId, provider: &str) -> anyhow::Result<()> {
    if BUILT_IN_PROVIDERS.contains(&provider) {
        return Ok(());
    }
    let custom: Option<(String,)> =
        sqlx::query_as("SELECT name FROM custom_providers WHERE project_id = $1 AND name = $2")
            .bind(project.0)
            .bind(provider)
            .fetch_optional(pool)
            .await
            .context("looking up custom providers")?;
    if custom.is_none() {
        anyhow::bail!(
            "unknown provider '{provider}': use {} or a custom provider registered for this project (`tollgate providers add`)",
            BUILT_IN_PROVIDERS.join(", ")
        );
    }
    Ok(())
}

/// Stores (or replaces) `project`'s key for `provider`, encrypted with `enc`.
pub async fn store_provider_key(
    pool: &PgPool,
    project: ProjectId,
    provider: &str,
    key: &ProviderKey,
    enc: &EncryptionKey,
) -> anyhow::Result<()> {
    check_key(key)?;
    check_provider(pool, project, provider).await?;
    let sealed = enc.seal(project, provider, key)?;
    sqlx::query(
        "INSERT INTO provider_keys (project_id, provider, ciphertext, nonce, key_hint) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (project_id, provider) DO UPDATE \
         SET ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce, \
             key_hint = EXCLUDED.key_hint, created_at = now()",
    )
    .bind(project.0)
    .bind(provider)
    .bind(&sealed.ciphertext)
    .bind(&sealed.nonce)
    .bind(key_hint(key))
    .execute(pool)
    .await
    .with_context(|| format!("storing the {provider} key of project {project}"))?;
    Ok(())
}

/// `project`'s key for `provider`, decrypted; `None` if none is stored. A
/// stored key that does not decrypt is an error ([`DecryptError`]).
pub async fn load_provider_key(
    pool: &PgPool,
    project: ProjectId,
    provider: &str,
    enc: &EncryptionKey,
) -> anyhow::Result<Option<ProviderKey>> {
    let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT ciphertext, nonce FROM provider_keys WHERE project_id = $1 AND provider = $2",
    )
    .bind(project.0)
    .bind(provider)
    .fetch_optional(pool)
    .await
    .with_context(|| format!("loading the {provider} key of project {project}"))?;
    let Some((ciphertext, nonce)) = row else {
        return Ok(None);
    };
    let key = enc.open(project, provider, &Sealed { ciphertext, nonce })?;
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_forms_read_the_same_key() {
        let key = EncryptionKey::generate();
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.0);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.0);
        assert_eq!(
            EncryptionKey::from_env_value(&key.to_hex()),
            Ok(key.clone())
        );
        assert_eq!(
            EncryptionKey::from_env_value(&format!(" {b64}\n")),
            Ok(key.clone())
        );
        assert_eq!(EncryptionKey::from_env_value(&url), Ok(key));
    }

    #[test]
    fn hints_show_four_characters_of_long_keys_only() {
        assert_eq!(key_hint(&ProviderKey::new("sk-ant-0123456789abcd")), "abcd");
        assert_eq!(key_hint(&ProviderKey::new("short-key")), "");
    }

    #[test]
    fn bad_keys_are_refused_without_quoting_them() {
        for bad in ["", "   ", "sk-\nabc"] {
            let err = check_key(&ProviderKey::new(bad))
                .err()
                .map(|e| e.to_string());
            assert!(err.is_some(), "{bad:?} accepted");
        }
        assert!(check_key(&ProviderKey::new("sk-ok")).is_ok());
    }
}
