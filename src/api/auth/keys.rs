//! The keys tokens are checked against, as configured: the HS256 secret,
//! a PEM public key (RS256 or ES256), and the issuer and audience a token
//! must name.

use jsonwebtoken::{Algorithm, DecodingKey};

/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 section 3.2 asks.
pub const MIN_HS256_SECRET_LEN: usize = 32;

/// The key settings, as read from the environment (see `config`). Has no
/// `Debug`: it holds the HS256 secret.
#[derive(Clone, Default)]
pub struct AuthSettings {
    /// `AUTH_JWT_SECRET`: HS256 tokens are checked against it.
    pub hs256_secret: Option<Vec<u8>>,
    /// `AUTH_JWT_PUBLIC_KEY`, parsed: RS256 or ES256 tokens are checked
    /// against it.
    pub public_key: Option<PublicKey>,
    /// `AUTH_JWT_ISSUER`: when set, `iss` must be present and equal it.
    pub issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`: when set, `aud` must be present and name it;
    /// when unset, `aud` is not checked.
    pub audience: Option<String>,
}

impl AuthSettings {
    /// Whether calls must carry a token.
    pub fn enabled(&self) -> bool {
        self.hs256_secret.is_some() || self.public_key.is_some()
    }
}

/// A parsed public key and the one algorithm it verifies.
#[derive(Clone)]
pub struct PublicKey {
    pub(super) key: DecodingKey,
    pub(super) algorithm: Algorithm,
}

impl PublicKey {
    /// Parses a PEM public key: RSA (`BEGIN PUBLIC KEY` or `BEGIN RSA
    /// PUBLIC KEY`) verifies RS256, EC P-256 (`BEGIN PUBLIC KEY`) verifies
    /// ES256. A private key is refused (it must not be handed around). The
    /// error never quotes the input.
    pub fn from_pem(pem: &str) -> Result<Self, &'static str> {
        if pem.contains("PRIVATE KEY") {
            return Err("holds a private key; give the PEM public key (or its path) instead");
        }
        if !pem.contains("-----BEGIN") {
            return Err("is not a PEM public key (no -----BEGIN line)");
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
            return Ok(Self {
                key,
                algorithm: Algorithm::RS256,
            });
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem.as_bytes()) {
            return Ok(Self {
                key,
                algorithm: Algorithm::ES256,
            });
        }
        Err("is not a PEM RSA or EC (P-256) public key")
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_refuse_private_keys_and_garbage_without_quoting_them() {
        let private = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        let error = PublicKey::from_pem(private).err().unwrap();
        assert!(!error.contains("c2VjcmV0"));
        assert!(PublicKey::from_pem("/etc/none").is_err());
        assert!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }
}
