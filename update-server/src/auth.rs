//! Admin bearer tokens: read from a file, compared in constant time, never logged.

use std::path::Path;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// The admin tokens the server accepts. Only their sha256 digests are held, so comparisons
/// are over equal lengths and a memory dump shows no token.
#[derive(Clone, Default)]
pub struct AdminTokens {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured)", self.digests.len())
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Shortest token accepted in the file: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

impl AdminTokens {
    /// Tokens from text: one per line; blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let mut digests = Vec::new();
        for (n, t) in slipway_api::wire::token_lines(text) {
            if t.len() < MIN_TOKEN_LEN || t.chars().any(char::is_whitespace) {
                return Err(Error::Config(format!(
                    "admin token on line {n} must be at least {MIN_TOKEN_LEN} characters without spaces"
                )));
            }
            digests.push(digest(t.as_bytes()));
        }
        Ok(Self { digests })
    }

    /// Tokens from a file; a missing file means no admin access (logged by the caller).
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every configured token is compared, each in
    /// constant time, so timing reveals neither which token matched nor how much of one did.
    pub fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0);
        for t in &self.digests {
            ok |= t.ct_eq(&d);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_match() {
        let t =
            AdminTokens::parse("# admins\nalpha-token-0123456789\n\n  beta-token-0123456789  \n")
                .unwrap();
        assert!(t.accepts("alpha-token-0123456789"));
        assert!(t.accepts("beta-token-0123456789"));
        assert!(!t.accepts("alpha-token-012345678"));
        assert!(!t.accepts(""));
        assert!(AdminTokens::parse("short").is_err());
        assert!(!format!("{t:?}").contains("alpha"));
    }
}
