//! How the [`Authenticator`] takes and refuses tokens.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tonic::{Code, Status};

use super::*;
use crate::jobs::fields::UserId;

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
    let not_admin = json!({"sub": "ops", "exp": now() + 60, "scope": "translation.administrator"});
    assert!(!check(&auth, &hs256(not_admin)).unwrap().admin);
}

#[test]
fn expired_immature_and_unsigned_tokens_are_unauthenticated() {
    let auth = authenticator(None, None);
    let expired = hs256(json!({"sub": "a", "exp": now() - LEEWAY_SECS - 5}));
    let immature = hs256(json!({"sub": "a", "exp": now() + 600, "nbf": now() + LEEWAY_SECS + 60}));
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
