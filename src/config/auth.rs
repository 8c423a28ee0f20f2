//! Bearer tokens (`AUTH_JWT_SECRET`, `AUTH_JWT_PUBLIC_KEY`,
//! `AUTH_JWT_ISSUER`, `AUTH_JWT_AUDIENCE`) and whether the service may run
//! without them (`AUTH_MODE`). No error quotes the secret or the key.

use super::{ConfigError, listen::ListenAddr};
use crate::api::auth::{AuthSettings, MIN_HS256_SECRET_LEN, PublicKey};

/// `AUTH_JWT_SECRET`, `AUTH_JWT_PUBLIC_KEY`, `AUTH_JWT_ISSUER`,
/// `AUTH_JWT_AUDIENCE`. No error quotes the secret or the key.
pub(super) fn auth_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<AuthSettings, ConfigError> {
    let hs256_secret = match get("AUTH_JWT_SECRET") {
        None => None,
        Some(secret) if secret.contains("-----BEGIN") => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                "holds a PEM key, but it is the shared HS256 secret; put a PEM public key \
                 (RS256 or ES256), or its path, in AUTH_JWT_PUBLIC_KEY instead",
            ));
        }
        Some(secret) if secret.len() < MIN_HS256_SECRET_LEN => {
            return Err(ConfigError::new(
                "AUTH_JWT_SECRET",
                format!(
                    "must be at least {MIN_HS256_SECRET_LEN} bytes (256 bits) for HS256, got {}",
                    secret.len()
                ),
            ));
        }
        Some(secret) => Some(secret.into_bytes()),
    };
    let public_key = match get("AUTH_JWT_PUBLIC_KEY") {
        None => None,
        Some(raw) => {
            let pem = if raw.contains("-----BEGIN") {
                // A PEM in the variable; some secret stores keep its line
                // breaks as literal "\n".
                if raw.contains('\n') {
                    raw
                } else {
                    raw.replace("\\n", "\n")
                }
            } else {
                let path = raw.trim();
                std::fs::read_to_string(path).map_err(|error| {
                    ConfigError::new(
                        "AUTH_JWT_PUBLIC_KEY",
                        format!(
                            "holds no PEM (no -----BEGIN line), so it is taken as a file path, \
                             and that file cannot be read: {error}"
                        ),
                    )
                })?
            };
            Some(
                PublicKey::from_pem(&pem)
                    .map_err(|reason| ConfigError::new("AUTH_JWT_PUBLIC_KEY", reason))?,
            )
        }
    };
    Ok(AuthSettings {
        hs256_secret,
        public_key,
        issuer: get("AUTH_JWT_ISSUER").map(|s| s.trim().to_owned()),
        audience: get("AUTH_JWT_AUDIENCE").map(|s| s.trim().to_owned()),
    })
}

/// Whether callers must carry bearer tokens, and if not, why the service
/// may run open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// A key is set: every call of the job service needs a token.
    Jwt,
    /// `AUTH_MODE=none`: open, deliberately.
    OpenAsked,
    /// No key and no `AUTH_MODE`, every listener on loopback: only this
    /// machine can call (a developer's run, the README's run command, scripts/run.sh).
    OpenLoopback,
}

impl AuthMode {
    pub fn is_open(self) -> bool {
        self != AuthMode::Jwt
    }
}

/// `AUTH_MODE` (`jwt` or `none`) with the key variables and the listeners:
/// open only when asked, or when nobody but this machine can connect.
/// Safe by default, as Redis's protected mode is.
pub(super) fn auth_mode(
    get: &impl Fn(&str) -> Option<String>,
    auth: &AuthSettings,
    listeners: &[(&str, &ListenAddr)],
) -> Result<AuthMode, ConfigError> {
    const KEYS: &str = "AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY (RS256/ES256)";
    let keys = auth.enabled();
    if !keys {
        for name in ["AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"] {
            if get(name).is_some() {
                return Err(ConfigError::new(
                    name,
                    format!("is set but no key is: tokens cannot be checked; set {KEYS}"),
                ));
            }
        }
    }
    let mode = get("AUTH_MODE").map(|mode| mode.trim().to_ascii_lowercase());
    match (mode.as_deref(), keys) {
        (Some("jwt") | None, true) => Ok(AuthMode::Jwt),
        (Some("jwt"), false) => Err(ConfigError::new(
            "AUTH_MODE",
            format!("is jwt but no key is set: set {KEYS}"),
        )),
        (Some("none"), true) => Err(ConfigError::new(
            "AUTH_MODE",
            "is none but a key (AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY) is set: unset the key \
             to run open, or unset AUTH_MODE (or set it to jwt) to require tokens",
        )),
        (Some("none"), false) => Ok(AuthMode::OpenAsked),
        (Some(other), _) => Err(ConfigError::new(
            "AUTH_MODE",
            format!("must be jwt or none, got {other:?}"),
        )),
        (None, false) => match listeners.iter().find(|(_, addr)| !addr.is_loopback()) {
            None => Ok(AuthMode::OpenLoopback),
            Some((name, addr)) => Err(ConfigError::new(
                "AUTH_MODE",
                format!(
                    "is not set and no key is ({KEYS}), while {name} listens on {addr}, beyond \
                     this machine: the service would be open to anyone who reaches it. Set a \
                     key to require tokens, set AUTH_MODE=none to run open deliberately, or \
                     bind every listener to loopback (127.0.0.1)"
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{exactly, settings};

    #[test]
    fn the_service_runs_open_only_when_asked_or_on_loopback() {
        let url = ("DATABASE_URL", "postgres://u@db:5432/jobs");
        let secret = ("AUTH_JWT_SECRET", "0123456789abcdef0123456789abcdef");
        let loopback = [
            ("GRPC_ADDR", "127.0.0.1:50051"),
            ("HTTP_ADDR", "localhost:8000"),
        ];
        let mode = |vars: &[(&str, &str)]| exactly(vars).map(|s| s.auth_mode);

        // Defaults listen on every interface: no key and no AUTH_MODE refuse.
        let refused = mode(&[url]).unwrap_err();
        assert_eq!(refused.name, "AUTH_MODE");
        for named in [
            "AUTH_JWT_SECRET",
            "AUTH_JWT_PUBLIC_KEY",
            "AUTH_MODE=none",
            "0.0.0.0:50051",
        ] {
            assert!(refused.to_string().contains(named), "{refused}");
        }
        // One listener beyond loopback is enough to refuse.
        let refused = mode(&[url, loopback[0]]).unwrap_err();
        assert!(refused.to_string().contains("HTTP_ADDR"), "{refused}");
        assert_eq!(
            mode(&[url, loopback[0], loopback[1]]),
            Ok(AuthMode::OpenLoopback)
        );
        assert_eq!(
            mode(&[url, loopback[0], ("HTTP_ADDR", "[::1]:8000")]),
            Ok(AuthMode::OpenLoopback)
        );
        assert_eq!(mode(&[url, ("AUTH_MODE", "none")]), Ok(AuthMode::OpenAsked));
        assert_eq!(
            mode(&[url, ("AUTH_MODE", " None ")]),
            Ok(AuthMode::OpenAsked)
        );
        // Empty counts as unset.
        assert_eq!(
            mode(&[url, ("AUTH_MODE", " ")]).unwrap_err().name,
            "AUTH_MODE"
        );
        assert_eq!(mode(&[url, secret]), Ok(AuthMode::Jwt));
        assert_eq!(
            mode(&[url, secret, ("AUTH_MODE", "jwt")]),
            Ok(AuthMode::Jwt)
        );
        assert_eq!(
            mode(&[url, secret, ("AUTH_MODE", "none")])
                .unwrap_err()
                .name,
            "AUTH_MODE"
        );
        assert_eq!(
            mode(&[url, ("AUTH_MODE", "jwt")]).unwrap_err().name,
            "AUTH_MODE"
        );
        assert_eq!(
            mode(&[url, ("AUTH_MODE", "off")]).unwrap_err().name,
            "AUTH_MODE"
        );
        for name in ["AUTH_JWT_ISSUER", "AUTH_JWT_AUDIENCE"] {
            let refused = mode(&[url, ("AUTH_MODE", "none"), (name, "x")]).unwrap_err();
            assert_eq!(refused.name, name);
        }
        let pem = "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----";
        let refused = mode(&[url, ("AUTH_JWT_SECRET", pem)]).unwrap_err();
        assert_eq!(refused.name, "AUTH_JWT_SECRET");
        assert!(
            refused.to_string().contains("AUTH_JWT_PUBLIC_KEY"),
            "{refused}"
        );
        assert!(
            !refused.to_string().contains("MFkw"),
            "the key is never quoted"
        );
    }

    #[test]
    fn a_public_key_is_read_from_the_variable_or_from_a_file() {
        let pem = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEkpsAPNQqfa48sYFHijbknPNUdr0Z\n\
            iG+OF7q2tm+EZ91SyhAPnSW0fkHDdkc6sIqKFQn6Q6OQdxpnEuAB5YIWTA==\n\
            -----END PUBLIC KEY-----\n";
        let base = ("DATABASE_URL", "postgres://db/jobs");
        let inline = settings(&[base, ("AUTH_JWT_PUBLIC_KEY", pem)]).unwrap();
        assert!(inline.auth.enabled());
        let escaped = pem.replace('\n', "\\n");
        assert!(settings(&[base, ("AUTH_JWT_PUBLIC_KEY", &escaped)]).is_ok());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), pem).unwrap();
        let path = file.path().display().to_string();
        let from_file = settings(&[base, ("AUTH_JWT_PUBLIC_KEY", &path)]).unwrap();
        assert_eq!(
            from_file.auth.public_key.unwrap().algorithm(),
            jsonwebtoken::Algorithm::ES256
        );
    }
}
