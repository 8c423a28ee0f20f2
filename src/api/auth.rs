//! Who is calling, and what they may do.
//!
//! With `AUTH_JWT_SECRET` (HS256) and/or `AUTH_JWT_PUBLIC_KEY` (RS256 or
//! ES256) set, every call of the job service (gRPC and the HTTP job routes;
//! never health, reflection or `/metrics`) carries `authorization: Bearer
//! <JWT>`. The token's signature, algorithm, `exp` and `nbf` (with
//! [`LEEWAY`]), and the configured issuer and audience are checked; its `sub`
//! becomes the caller's identity, stored as the job's `user_id`; its scopes
//! (`scope`, space-separated, or `scp`, a list) decide whether the caller
//! sees every job ([`ADMIN_SCOPE`]) or only its own. Without either setting
//! the service runs open: the caller names itself in `x-user-id` and may
//! read and change every job, as before authentication existed.
//!
//! The gRPC side is a tonic interceptor on the job service alone, which puts
//! a [`Principal`] into the request's extensions; the HTTP side is an axum
//! extractor of [`Caller`] doing the same check.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{FromRef, FromRequestParts},
    http::request::Parts,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind};
use serde::Deserialize;
use tonic::{Request, Status, service::Interceptor};

use super::{
    caller::{
        ADMIN_SCOPE, Caller, Principal, TRACEPARENT_METADATA, USER_ID_METADATA, traceparent_from,
        user_id_from,
    },
    status::{ApiError, AuthError, HttpError},
};
use crate::jobs::{Scope, fields::UserId};

/// Metadata key (and HTTP header) of the bearer token.
pub const AUTHORIZATION: &str = "authorization";
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 section 3.2 asks.
pub const MIN_HS256_SECRET_LEN: usize = 32;
/// Tokens remembered as verified, until their `exp`. A caller sends the
/// same token with every call, and checking an RS256 or ES256 signature
/// costs 0.3 to 0.6 ms of CPU (measured on the release build), which at
/// thousands of calls a second would be cores. Only tokens that passed
/// every check are remembered; when full, the memory is emptied.
const VERIFIED_TOKENS: usize = 4096;

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
    key: DecodingKey,
    algorithm: Algorithm,
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

/// The check every call of the job service goes through. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    /// `None`: no keys configured, the service runs open.
    verifier: Option<Arc<Verifier>>,
}

struct Verifier {
    hs256: Option<DecodingKey>,
    public: Option<PublicKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Token -> who it names and until when (Unix seconds, `exp` plus the
    /// leeway). The keys never change while the process runs, so a token
    /// once verified stays good until then.
    verified: Mutex<HashMap<String, (Principal, u64)>>,
}

impl Authenticator {
    /// Logs, at start-up, how calls are checked.
    pub fn new(settings: &AuthSettings) -> Self {
        if !settings.enabled() {
            // Why it may run open is logged by the app (`AuthMode`).
            return Self { verifier: None };
        }
        let hs256 = settings
            .hs256_secret
            .as_deref()
            .and_then(|secret| DecodingKey::from_secret(secret).ok());
        let mut algorithms = Vec::new();
        if hs256.is_some() {
            algorithms.push("HS256");
        }
        if let Some(public) = &settings.public_key {
            algorithms.push(match public.algorithm {
                Algorithm::RS256 => "RS256",
                _ => "ES256",
            });
        }
        tracing::info!(
            algorithms = %algorithms.join(","),
            issuer = settings.issuer.as_deref().unwrap_or("(any)"),
            audience = settings.audience.as_deref().unwrap_or("(any)"),
            "bearer tokens required on the job service"
        );
        if settings.audience.is_none() {
            tracing::warn!(
                "AUTH_JWT_AUDIENCE is not set: tokens issued for any audience (another service's too) are accepted; set it to the audience your issuer puts in `aud`"
            );
        }
        Self {
            verifier: Some(Arc::new(Verifier {
                hs256,
                public: settings.public_key.clone(),
                issuer: settings.issuer.clone(),
                audience: settings.audience.clone(),
                verified: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// No authentication: every caller sees every job.
    pub fn open() -> Self {
        Self { verifier: None }
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// Checks one call from its raw `authorization` and `x-user-id` values
    /// (gRPC metadata or HTTP headers alike).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        user_id: Option<&[u8]>,
    ) -> Result<Principal, ApiError> {
        match &self.verifier {
            None => Ok(Principal {
                user_id: user_id_from(user_id)?,
                scope: Scope::All,
                admin: true,
            }),
            Some(verifier) => {
                let principal = verifier.verify(authorization).inspect_err(|error| {
                    tracing::debug!(reason = %error, "call refused: bad or missing bearer token");
                })?;
                Ok(principal)
            }
        }
    }
}

impl Verifier {
    fn verify(&self, authorization: Option<&[u8]>) -> Result<Principal, ApiError> {
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

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Principal, u64)>> {
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

/// Refuses callers without the admin scope; the one check every admin-only
/// RPC makes (`action` names the RPC in the error).
pub fn require_admin(caller: &Caller, action: &'static str) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(AuthError::NotAdmin { action }.into())
    }
}

/// The tonic interceptor of the job service: checks the call and leaves a
/// [`Principal`] in its extensions for the handler.
#[derive(Clone)]
pub struct AuthInterceptor {
    authenticator: Authenticator,
}

impl AuthInterceptor {
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let metadata = request.metadata();
        let principal = self.authenticator.authenticate(
            metadata.get(AUTHORIZATION).map(|v| v.as_bytes()),
            metadata.get(USER_ID_METADATA).map(|v| v.as_bytes()),
        )?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The caller of a gRPC call, from what the interceptor left. A request
/// that did not pass the interceptor is refused (fails closed).
pub fn grpc_caller<T>(request: &Request<T>) -> Result<Caller, ApiError> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or(AuthError::Missing)?;
    Ok(Caller::new(
        principal,
        traceparent_from(
            request
                .metadata()
                .get(TRACEPARENT_METADATA)
                .map(|v| v.as_bytes()),
        ),
    ))
}

/// The caller of an HTTP job route, checked like a gRPC call. Any router
/// state that yields the [`Authenticator`] will do (the job routes' is
/// `JobsApi`).
impl<S> FromRequestParts<S> for Caller
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let principal = Authenticator::from_ref(state).authenticate(
            headers.get(AUTHORIZATION).map(|v| v.as_bytes()),
            headers.get(USER_ID_METADATA).map(|v| v.as_bytes()),
        )?;
        Ok(Caller::new(
            principal,
            traceparent_from(headers.get(TRACEPARENT_METADATA).map(|v| v.as_bytes())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use tonic::Code;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn authenticator(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
        Authenticator::new(&AuthSettings {
            hs256_secret: Some(SECRET.to_vec()),
            public_key: None,
            issuer: issuer.map(Into::into),
            audience: audience.map(Into::into),
        })
    }

    fn check(auth: &Authenticator, token: &str) -> Result<Principal, Status> {
        auth.authenticate(Some(format!("Bearer {token}").as_bytes()), None)
            .map_err(Status::from)
    }

    #[test]
    fn a_good_token_names_the_caller_and_scopes_it_to_its_own_jobs() {
        let auth = authenticator(None, None);
        let principal = check(&auth, &hs256(json!({"sub": "billing", "exp": now() + 60}))).unwrap();
        assert_eq!(principal.user_id.as_str(), "billing");
        assert_eq!(
            principal.scope,
            Scope::Owner(UserId::parse("sub", "billing").unwrap())
        );
        assert!(!principal.admin);
    }

    #[test]
    fn the_admin_scope_is_read_from_scope_or_scp() {
        let auth = authenticator(None, None);
        for claims in [
            json!({"sub": "ops", "exp": now() + 60, "scope": "read translation.admin"}),
            json!({"sub": "ops", "exp": now() + 60, "scp": ["translation.admin"]}),
            json!({"sub": "ops", "exp": now() + 60, "scp": "translation.admin other"}),
        ] {
            let principal = check(&auth, &hs256(claims)).unwrap();
            assert!(principal.admin);
            assert_eq!(principal.scope, Scope::All);
        }
        let not_admin =
            json!({"sub": "ops", "exp": now() + 60, "scope": "translation.administrator"});
        assert!(!check(&auth, &hs256(not_admin)).unwrap().admin);
    }

    #[test]
    fn expired_immature_and_unsigned_tokens_are_unauthenticated() {
        let auth = authenticator(None, None);
        let expired = hs256(json!({"sub": "a", "exp": now() - LEEWAY_SECS - 5}));
        let immature =
            hs256(json!({"sub": "a", "exp": now() + 600, "nbf": now() + LEEWAY_SECS + 60}));
        let no_exp = hs256(json!({"sub": "a"}));
        let no_sub = hs256(json!({"exp": now() + 60}));
        let empty_sub = hs256(json!({"sub": "", "exp": now() + 60}));
        // alg none: header {"alg":"none"}, no signature.
        let none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64_url(&json!({"sub": "a", "exp": now() + 60}).to_string())
        );
        let tampered = {
            let good = hs256(json!({"sub": "a", "exp": now() + 60}));
            let (head, _) = good.rsplit_once('.').unwrap();
            let forged = base64_url(&json!({"sub": "admin", "exp": now() + 60}).to_string());
            let (header, _) = head.split_once('.').unwrap();
            format!("{header}.{forged}.{}", good.rsplit_once('.').unwrap().1)
        };
        for (name, token) in [
            ("expired", expired),
            ("immature", immature),
            ("no exp", no_exp),
            ("no sub", no_sub),
            ("empty sub", empty_sub),
            ("alg none", none),
            ("tampered", tampered),
            ("garbage", "not.a.jwt".to_owned()),
        ] {
            let status = check(&auth, &token).unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated, "{name}");
            assert!(!status.message().contains(&token), "{name}");
        }
        // Within the leeway an expired token still passes.
        let recent = hs256(json!({"sub": "a", "exp": now() - 5}));
        assert!(check(&auth, &recent).is_ok());
    }

    #[test]
    fn a_verified_token_is_remembered_only_until_it_expires() {
        let auth = authenticator(None, None);
        let verifier = auth.verifier.as_ref().unwrap();
        let good = hs256(json!({"sub": "a", "exp": now() + 60}));
        let first = check(&auth, &good).unwrap();
        assert_eq!(check(&auth, &good).unwrap(), first);
        assert_eq!(verifier.remembered().len(), 1);

        // A refused token is not remembered.
        let _ = check(&auth, "not.a.jwt");
        let _ = check(&auth, &hs256(json!({"sub": "a", "exp": now() - 3600})));
        assert_eq!(verifier.remembered().len(), 1);

        // Once past its time, a remembered token is checked again (and
        // this one, expired, is refused).
        let expired = hs256(json!({"sub": "b", "exp": now() - 3600}));
        verifier
            .remembered()
            .insert(expired.clone(), (first, now() - 1));
        assert_eq!(
            check(&auth, &expired).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn missing_or_non_bearer_authorization_is_unauthenticated() {
        let auth = authenticator(None, None);
        for value in [
            None,
            Some(&b"Basic dXNlcjpwYXNz"[..]),
            Some(&b"Bearer"[..]),
            Some(&b"Bearer   "[..]),
            Some(&b"\xff\xfe"[..]),
        ] {
            let status = Status::from(auth.authenticate(value, Some(b"someone")).unwrap_err());
            assert_eq!(status.code(), Code::Unauthenticated, "{value:?}");
        }
        let token = hs256(json!({"sub": "a", "exp": now() + 60}));
        assert!(
            auth.authenticate(Some(format!("bearer {token}").as_bytes()), None)
                .is_ok()
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let auth = authenticator(Some("https://idp"), Some("translation-jobs"));
        let good =
            json!({"sub": "a", "exp": now() + 60, "iss": "https://idp", "aud": "translation-jobs"});
        assert!(check(&auth, &hs256(good)).is_ok());
        for claims in [
            json!({"sub": "a", "exp": now() + 60, "aud": "translation-jobs"}),
            json!({"sub": "a", "exp": now() + 60, "iss": "https://other", "aud": "translation-jobs"}),
            json!({"sub": "a", "exp": now() + 60, "iss": "https://idp"}),
            json!({"sub": "a", "exp": now() + 60, "iss": "https://idp", "aud": "billing"}),
        ] {
            assert_eq!(
                check(&auth, &hs256(claims.clone())).unwrap_err().code(),
                Code::Unauthenticated,
                "{claims}"
            );
        }
        // Without an audience configured, a token's aud is not checked.
        let open_aud = authenticator(None, None);
        let with_aud = json!({"sub": "a", "exp": now() + 60, "aud": "anything"});
        assert!(check(&open_aud, &hs256(with_aud)).is_ok());
    }

    #[test]
    fn without_keys_the_service_is_open_and_takes_x_user_id() {
        let auth = Authenticator::open();
        let principal = auth.authenticate(None, Some(b"billing")).unwrap();
        assert_eq!(principal.user_id.as_str(), "billing");
        assert_eq!(principal.scope, Scope::All);
        assert!(principal.admin);
        let status = Status::from(auth.authenticate(None, Some(b"bad\x01id")).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
    }

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

    /// A service holding only a public key: tokens signed with its private
    /// key pass; HS256 tokens "signed" with the public key (the classic
    /// algorithm confusion) and tokens of other algorithms do not.
    fn check_asymmetric(
        public_pem: &str,
        private: &EncodingKey,
        algorithm: Algorithm,
        other: (&EncodingKey, Algorithm),
    ) {
        let public = PublicKey::from_pem(public_pem).unwrap();
        assert_eq!(public.algorithm(), algorithm);
        let auth = Authenticator::new(&AuthSettings {
            public_key: Some(public),
            ..AuthSettings::default()
        });
        let claims = json!({"sub": "billing", "exp": now() + 60});
        let good = encode(&Header::new(algorithm), &claims, private).unwrap();
        assert_eq!(check(&auth, &good).unwrap().user_id.as_str(), "billing");

        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            check(&auth, &confused).unwrap_err().code(),
            Code::Unauthenticated
        );
        let (other_key, other_algorithm) = other;
        let foreign = encode(&Header::new(other_algorithm), &claims, other_key).unwrap();
        assert_eq!(
            check(&auth, &foreign).unwrap_err().code(),
            Code::Unauthenticated
        );
        // The right algorithm with another key of the same kind: bad signature.
        let forged = {
            let mut header = Header::new(algorithm);
            header.kid = Some("forged".into());
            encode(&header, &claims, other_key)
        };
        if let Ok(forged) = forged {
            assert_eq!(
                check(&auth, &forged).unwrap_err().code(),
                Code::Unauthenticated
            );
        }
    }

    fn ec_key() -> (String, EncodingKey) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let private = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (pair.public_key_pem(), private)
    }

    fn rsa_key() -> (String, EncodingKey) {
        use rsa::{
            Generate,
            pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding},
        };
        let key = rsa::PrivateKey::generate();
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        (
            public,
            EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn es256_and_rs256_public_keys_verify_their_own_algorithm_only() {
        let (ec_public, ec_private) = ec_key();
        let (rsa_public, rsa_private) = rsa_key();
        check_asymmetric(
            &ec_public,
            &ec_private,
            Algorithm::ES256,
            (&rsa_private, Algorithm::RS256),
        );
        check_asymmetric(
            &rsa_public,
            &rsa_private,
            Algorithm::RS256,
            (&ec_private, Algorithm::ES256),
        );
        // With both a secret and a public key, each algorithm keeps its key.
        let auth = Authenticator::new(&AuthSettings {
            hs256_secret: Some(SECRET.to_vec()),
            public_key: Some(PublicKey::from_pem(&ec_public).unwrap()),
            ..AuthSettings::default()
        });
        let claims = json!({"sub": "a", "exp": now() + 60});
        let es = encode(&Header::new(Algorithm::ES256), &claims, &ec_private).unwrap();
        assert!(check(&auth, &es).is_ok());
        assert!(check(&auth, &hs256(claims.clone())).is_ok());
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap();
        assert_eq!(
            check(&auth, &hs384).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    fn base64_url(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
