//! Account numbers, encrypted at rest with AES-256-GCM under
//! `ENCRYPTION_KEY`, and only ever shown masked.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key};
use freedumb_kit::config::{ConfigError, Env};
use secrecy::ExposeSecret;
use uuid::Uuid;

#[cfg(test)]
const NONCE_LEN: usize = 12;

pub struct Cipher {
    aead: Aes256Gcm,
}

impl Cipher {
    /// `ENCRYPTION_KEY`: 32 bytes as 64 hex digits (the seed's "encryption-key-hex").
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let expected = "64 hex digits (a 256-bit key)";
        let secret = env.secret("ENCRYPTION_KEY", 64)?;
        let bytes = hex::decode(secret.expose_secret().trim())
            .map_err(|_| ConfigError::malformed("ENCRYPTION_KEY", expected))?;
        if bytes.len() != 32 {
            return Err(ConfigError::malformed("ENCRYPTION_KEY", expected));
        }
        Ok(Cipher { aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)) })
    }

    /// Encrypts `plain`, bound to the account's id so a ciphertext copied
    /// onto another account does not decrypt.
    pub fn seal(&self, account_id: Uuid, plain: &str) -> anyhow::Result<Vec<u8>> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .aead
            .encrypt(&nonce, Payload { msg: plain.as_bytes(), aad: account_id.as_bytes() })
            .map_err(|_| anyhow::anyhow!("failed to encrypt an account number"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypts: only the tests need it today (nothing shows a number
    /// unmasked), and they prove the stored value stays recoverable.
    #[cfg(test)]
    pub fn open(&self, account_id: Uuid, sealed: &[u8]) -> anyhow::Result<String> {
        anyhow::ensure!(sealed.len() > NONCE_LEN, "an encrypted account number is truncated");
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(aes_gcm::Nonce::from_slice(nonce), Payload { msg: ciphertext, aad: account_id.as_bytes() })
            .map_err(|_| anyhow::anyhow!("an account number does not decrypt with ENCRYPTION_KEY"))?;
        Ok(String::from_utf8(plain)?)
    }
}

/// Digits only, 4 to 34 characters (IBANs are up to 34); spaces and dashes
/// are dropped first.
pub fn normalise(raw: &str) -> Option<String> {
    let cleaned: String = raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect::<String>().to_ascii_uppercase();
    let ok = (4..=34).contains(&cleaned.len()) && cleaned.chars().all(|c| c.is_ascii_alphanumeric());
    ok.then_some(cleaned)
}

pub fn last4(normalised: &str) -> String {
    normalised[normalised.len().saturating_sub(4)..].to_owned()
}

pub fn masked(last4: &str) -> String {
    format!("••••{last4}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        let env = Env::from_map([("ENCRYPTION_KEY".to_owned(), "ab".repeat(32))].into_iter().collect());
        Cipher::from_env(&env).unwrap()
    }

    #[test]
    fn a_sealed_number_opens_only_for_its_account() {
        let cipher = cipher();
        let account = Uuid::new_v4();
        let sealed = cipher.seal(account, "DE89370400440532013000").unwrap();
        assert!(!sealed.windows(4).any(|w| w == b"3000"), "no plaintext in the ciphertext");
        assert_eq!(cipher.open(account, &sealed).unwrap(), "DE89370400440532013000");
        assert!(cipher.open(Uuid::new_v4(), &sealed).is_err());
    }

    #[test]
    fn the_key_must_be_256_bits_of_hex() {
        for bad in ["zz".repeat(32), "ab".repeat(31)] {
            let env = Env::from_map([("ENCRYPTION_KEY".to_owned(), bad)].into_iter().collect());
            assert_eq!(Cipher::from_env(&env).err().map(|e| e.var), Some("ENCRYPTION_KEY".to_owned()));
        }
    }

    #[test]
    fn numbers_are_normalised_and_masked() {
        assert_eq!(normalise("de89 3704-0044"), Some("DE8937040044".to_owned()));
        assert_eq!(normalise("12"), None);
        assert_eq!(normalise("12;34"), None);
        assert_eq!(masked(&last4("DE8937040044")), "••••0044");
    }
}
