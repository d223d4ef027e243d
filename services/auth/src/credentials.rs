//! Parse, don't validate: an [`Email`] or a [`Password`] exists only if it
//! passed the rules, and the rules live here.

use std::fmt;

use freedumb_kit::FieldError;

/// An email address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let email = raw.trim().to_lowercase();
        let invalid = || FieldError::new("email", "must be an email address such as name@example.com");
        if email.is_empty() || email.len() > 254 {
            return Err(invalid());
        }
        if !email_address::EmailAddress::is_valid(&email) {
            return Err(invalid());
        }
        // `name@localhost` is valid RFC 5322 but no one can receive mail there.
        let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !domain.contains('.') || domain.starts_with('[') {
            return Err(invalid());
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Passwords that pass the length rule but are first in every guessing list.
const COMMON_PASSWORDS: &[&str] = &[
    "123456789012",
    "1234567890123",
    "aaaaaaaaaaaa",
    "password1234",
    "password12345",
    "passwordpassword",
    "qwertyuiop12",
    "qwertyuiopasdf",
    "iloveyou1234",
    "letmein12345",
    "welcome12345",
    "changeme1234",
];

/// A password that meets the policy: 12 to 128 characters, not a well-known
/// one, not the email address. Length over composition rules, as NIST SP
/// 800-63B recommends.
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str, email: Option<&Email>) -> Result<Self, FieldError> {
        let chars = raw.chars().count();
        let problem = if chars < MIN_PASSWORD_CHARS {
            Some(format!("must be at least {MIN_PASSWORD_CHARS} characters long"))
        } else if chars > MAX_PASSWORD_CHARS {
            Some(format!("must be at most {MAX_PASSWORD_CHARS} characters long"))
        } else if COMMON_PASSWORDS.contains(&raw.to_lowercase().as_str()) {
            Some("is too common; choose a less guessable one".to_owned())
        } else if email.is_some_and(|email| raw.trim().to_lowercase() == email.as_str()) {
            Some("must not be the email address".to_owned())
        } else if raw.chars().all(|c| Some(c) == raw.chars().next()) {
            Some("must not repeat one character".to_owned())
        } else {
            None
        };
        match problem {
            Some(message) => Err(FieldError::new("password", message)),
            None => Ok(Password(raw.to_owned())),
        }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

// Never printed, not even in a debug log.
impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email::parse("ada@example.com").unwrap()
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(Email::parse("  Ada.Lovelace@Example.COM ").unwrap().as_str(), "ada.lovelace@example.com");
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for bad in ["", "ada", "ada@", "@example.com", "ada@localhost", "ada @example.com", "a@b@example.com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_overlong_email_is_rejected() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn short_passwords_are_rejected_with_the_minimum() {
        let err = Password::parse("short", Some(&email())).unwrap_err();
        assert_eq!(err.message, "must be at least 12 characters long");
    }

    #[test]
    fn length_is_counted_in_characters_not_bytes() {
        // Eleven characters, but 22 bytes.
        assert!(Password::parse("ééééééééééé", Some(&email())).is_err());
        assert!(Password::parse("correct horse battery staple", Some(&email())).is_ok());
    }

    #[test]
    fn common_and_repeated_passwords_are_rejected() {
        assert!(Password::parse("Password1234", Some(&email())).is_err());
        assert!(Password::parse("zzzzzzzzzzzzzzzz", Some(&email())).is_err());
    }

    #[test]
    fn the_email_is_not_a_password() {
        assert!(Password::parse("ADA@example.com", Some(&email())).is_err());
    }

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let password = Password::parse("correct horse battery staple", Some(&email())).unwrap();
        assert_eq!(format!("{password:?}"), "Password(..)");
    }
}
