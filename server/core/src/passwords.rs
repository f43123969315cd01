//! Users' passwords: argon2id with OWASP's parameters, hashed off the async threads.
//!
//! A hash costs about 19 MiB and tens of milliseconds of one core by design, so it never runs
//! on a runtime thread: [`Passwords`] runs each on tokio's blocking pool behind a small
//! semaphore (half the cores, at least one), so a flood of logins queues there instead of
//! taking every core from the agents' connections.
//!
//! A login for an email that does not exist verifies against a dummy hash made with the same
//! parameters ([`Passwords::verify_or_dummy`]), so a failed login costs the same whether or not
//! the email is known.
//!
//! Salts come from ring's `SystemRandom` (16 bytes), the one random source of the server.
//! This module depends on nothing else of the crate.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{OnceCell, Semaphore};

/// The shortest password accepted (CONTRACT.md §9).
pub const MIN_LENGTH: usize = 12;
/// The longest, in characters: argon2 takes any length, but a megabyte "password" is a way to
/// burn CPU.
pub const MAX_LENGTH: usize = 1024;

/// Why a password is not acceptable, naming the rule.
pub fn check_new(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Err(format!(
            "password: at least {MIN_LENGTH} characters are required (got {chars})"
        ));
    }
    if chars > MAX_LENGTH {
        return Err(format!(
            "password: at most {MAX_LENGTH} characters (got {chars})"
        ));
    }
    Ok(())
}

/// argon2id, m = 19 MiB, t = 2, p = 1 (OWASP's first recommendation).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`) for `password`. Blocking: call through
/// [`Passwords`].
pub fn hash_blocking(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "the operating system's random source failed".to_owned())?;
    hasher()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("hashing a password: {e}"))
}

/// Whether `password` matches the PHC string `stored` (a malformed one matches nothing).
/// Blocking.
pub fn verify_blocking(password: &str, stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Hashing and verifying on the blocking pool, a few at a time.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy: Arc<OnceCell<String>>,
}

impl Default for Passwords {
    fn default() -> Self {
        Self::new()
    }
}

impl Passwords {
    /// At most half the cores (at least one) hash at a time.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            permits: Arc::new(Semaphore::new((cores / 2).max(1))),
            dummy: Arc::new(OnceCell::new()),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "password hashing has stopped".to_owned())?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| format!("password hashing task failed: {e}"))
    }

    /// The hash to store for a new password (checked with [`check_new`] first).
    pub async fn hash(&self, password: &str) -> Result<String, String> {
        let password = password.to_owned();
        self.blocking(move || hash_blocking(&password)).await?
    }

    /// Whether `password` matches `stored`; with no stored hash (unknown email, a user who
    /// has not accepted an invite) it verifies against a dummy hash and answers false, in
    /// the same time.
    pub async fn verify_or_dummy(
        &self,
        password: &str,
        stored: Option<&str>,
    ) -> Result<bool, String> {
        let (stored, real) = match stored {
            Some(stored) => (stored.to_owned(), true),
            None => (self.dummy().await?, false),
        };
        let password = password.to_owned();
        let matched = self
            .blocking(move || verify_blocking(&password, &stored))
            .await?;
        Ok(matched && real)
    }

    /// A hash of a random password with the same parameters, made once.
    async fn dummy(&self) -> Result<String, String> {
        self.dummy
            .get_or_try_init(|| async {
                let mut random = [0u8; 24];
                SystemRandom::new()
                    .fill(&mut random)
                    .map_err(|_| "the operating system's random source failed".to_owned())?;
                let password = hex::encode(random);
                self.blocking(move || hash_blocking(&password)).await?
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_for_a_new_password() {
        assert!(check_new("short").is_err());
        assert!(check_new(&"x".repeat(11)).is_err());
        assert!(check_new(&"x".repeat(12)).is_ok());
        assert!(check_new("ééééééééééé").is_err(), "counted in characters");
        assert!(check_new(&"x".repeat(MAX_LENGTH + 1)).is_err());
    }

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let passwords = Passwords::new();
        let hash = passwords.hash("correct horse battery").await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            passwords
                .verify_or_dummy("correct horse battery", Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify_or_dummy("wrong horse battery", Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify_or_dummy("correct horse battery", None)
                .await
                .expect("verify")
        );
        assert!(!verify_blocking("x", "not a hash"));
    }
}
