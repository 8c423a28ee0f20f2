//! Checking one bearer token: the `Bearer` scheme, the JWT's signature
//! with the key its algorithm names, `exp` and `nbf` (with [`LEEWAY_SECS`]),
//! the configured issuer and audience, `sub` and the scopes; and the memory
//! of tokens already verified.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::Deserialize;

use super::keys::{AuthSettings, PublicKey};
use crate::{
    api::{
        caller::{ADMIN_SCOPE, Principal},
        status::AuthError,
    },
    jobs::{Scope, fields::UserId},
};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Tokens remembered as verified, until their `exp`. A caller sends the
/// same token with every call, and checking an RS256 or ES256 signature
/// costs 0.3 to 0.6 ms of CPU (measured on the release build), which at
/// thousands of calls a second would be cores. Only tokens that passed
/// every check are remembered; when full, the memory is emptied.
const VERIFIED_TOKENS: usize = 4096;

/// The claims the service reads; everything else in the token is ignored.
#[derive(Deserialize)]
struct Claims {
    /// Required (the library says so when it is missing).
    #[serde(default)]
    sub: Option<String>,
    /// Required and checked by the library; read again to know how long
    /// the token may be remembered. A JSON number, maybe with a fraction.
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    scope: Option<Scopes>,
    #[serde(default)]
    scp: Option<Scopes>,
}

/// `scope` is a space-separated string (RFC 8693); `scp` is often a list.
/// Either form is read for either claim.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    Text(String),
    List(Vec<String>),
}

impl Scopes {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Scopes::Text(text) => text.split_ascii_whitespace().any(|s| s == wanted),
            Scopes::List(list) => list.iter().any(|s| s == wanted),
        }
    }
}

/// The keys and the checks of the configured authentication.
pub(super) struct Verifier {
    hs256: Option<DecodingKey>,
    public: Option<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Token -> who it names and until when (Unix seconds, `exp` plus the
    /// leeway). The keys never change while the process runs, so a token
    /// once verified stays good until then.
    verified: Mutex<HashMap<String, (Principal, u64)>>,
}

impl Verifier {
    pub(super) fn new(settings: &AuthSettings) -> Self {
        Self {
            hs256: settings
                .hs256_secret
                .as_deref()
                .and_then(|secret| DecodingKey::from_secret(secret).ok()),
            public: settings.public_key.clone(),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Whether HS256 tokens can be checked (the secret is a usable key).
    pub(super) fn has_hs256(&self) -> bool {
        self.hs256.is_some()
    }

    pub(super) fn verify(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        let token = bearer_token(authorization)?;
        let now = unix_now();
        if let Some((principal, until)) = self.remembered().get(token)
            && now <= *until
        {
            return Ok(principal.clone());
        }
        let (principal, until) = self.check(token)?;
        let mut verified = self.remembered();
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.to_owned(), (principal.clone(), until));
        Ok(principal)
    }

    pub(super) fn remembered(&self) -> MutexGuard<'_, HashMap<String, (Principal, u64)>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every check of one token: its principal and until when (Unix
    /// seconds) it stays valid.
    fn check(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let header =
            decode_header(token).map_err(|_| AuthError::Invalid("not a well-formed JWT"))?;
        // The key follows from the algorithm, and each key verifies exactly
        // one: an RS256 public key is never used as an HMAC secret, and
        // `none` is not an algorithm the library even parses.
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg => self
                .public
                .as_ref()
                .filter(|public| public.algorithm == alg)
                .map(|public| &public.key),
        }
        .ok_or(AuthError::Invalid(
            "signed with an algorithm this service does not accept",
        ))?;

        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }

        let claims = decode::<Claims>(token, key, &validation)
            .map_err(|error| AuthError::Invalid(reason(error.kind())))?
            .claims;
        let user_id = UserId::parse("sub", claims.sub.as_deref().unwrap_or_default())
            .ok()
            .filter(|id| !id.as_str().is_empty())
            .ok_or(AuthError::Invalid(
                "its sub must be 1 to 128 bytes without control characters",
            ))?;
        let admin = [&claims.scope, &claims.scp]
            .into_iter()
            .flatten()
            .any(|scopes| scopes.contains(ADMIN_SCOPE));
        // Saturating: a huge or odd `exp` cannot wrap around.
        let until = (claims.exp.unwrap_or_default() as u64).saturating_add(LEEWAY_SECS);
        let principal = Principal {
            scope: if admin {
                Scope::All
            } else {
                Scope::Owner(user_id.clone())
            },
            user_id,
            admin,
        };
        Ok((principal, until))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer_token(authorization: Option<&[u8]>) -> Result<&str, AuthError> {
    let raw = authorization.ok_or(AuthError::Missing)?;
    let text = std::str::from_utf8(raw).map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = text.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::NotBearer);
    }
    Ok(token)
}

/// What to tell the caller about a token the library refused.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet (nbf)",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "signed with an algorithm this service does not accept"
        }
        ErrorKind::InvalidIssuer => "wrong issuer (iss)",
        ErrorKind::InvalidAudience => "wrong audience (aud)",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "no exp claim",
            "sub" => "no sub claim",
            "iss" => "no iss claim",
            "aud" => "no aud claim",
            _ => "a required claim is missing",
        },
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
            "malformed claims (sub must be a string, exp and nbf numbers)"
        }
        _ => "not a well-formed JWT",
    }
}
