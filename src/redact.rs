//! Connection strings with their secrets masked, for log lines.
//!
//! A Redis URL carries passwords in two places: the userinfo
//! (`redis://user:password@host`, or `redis://password@host`) and query
//! parameters (`redis-sentinel://...?sentinelPassword=...`). Both are
//! replaced by `***`; the rest (scheme, user, hosts, database, service
//! name) stays, so the line still says where the service connects.

/// Query parameters whose value is masked: any name containing one of
/// these, in any case (`password`, `sentinelPassword`, `auth_token`, ...).
const SECRET_PARAMETERS: [&str; 5] = ["pass", "pwd", "secret", "token", "key"];

/// The mask that replaces a secret.
pub const MASK: &str = "***";

/// `url` with every password masked. Errs on the side of masking: anything
/// between `://` and the last `@` before the query is userinfo.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL: nothing can be told apart, so nothing is shown.
        return MASK.to_owned();
    };
    let authority_start = scheme_end + 3;
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    // The userinfo ends at the last `@` of the whole URL: a password written
    // unencoded may hold `/`, `?` or `#`, and cutting the URL at those first
    // would print the password's beginning.
    let after_userinfo = match url[authority_start..].rfind('@') {
        Some(at) => {
            let userinfo = &url[authority_start..authority_start + at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                // A lone userinfo in a Redis URL is the password.
                None => out.push_str(MASK),
            }
            authority_start + at
        }
        None => authority_start,
    };
    let query_start = url[after_userinfo..]
        .find(['?', '#'])
        .map_or(url.len(), |i| after_userinfo + i);
    out.push_str(&url[after_userinfo..query_start]);
    let rest = &url[query_start..];
    if let Some(query) = rest.strip_prefix('?') {
        let (query, fragment) = match query.find('#') {
            Some(i) => (&query[..i], &query[i..]),
            None => (query, ""),
        };
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
        if !fragment.is_empty() {
            out.push('#');
            out.push_str(MASK);
        }
    } else if !rest.is_empty() {
        out.push('#');
        out.push_str(MASK);
    }
    out
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_userinfo_and_query_never_survive() {
        assert_eq!(
            redact_url("redis://user:s3cret@cache:6379/0"),
            "redis://user:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@cache:6380"),
            "rediss://:***@cache:6380"
        );
        assert_eq!(redact_url("redis://s3cret@cache"), "redis://***@cache");
        assert_eq!(
            redact_url("redis://localhost:6379/0"),
            "redis://localhost:6379/0"
        );
        assert_eq!(
            redact_url(
                "redis-sentinel://:pw1@s1:26379/0?sentinelServiceName=main&sentinelPassword=pw2&node=s2:26379"
            ),
            "redis-sentinel://:***@s1:26379/0?sentinelServiceName=main&sentinelPassword=***&node=s2:26379"
        );
        assert_eq!(
            redact_url("redis://:pa/ss@word@cache/0"),
            "redis://:***@cache/0"
        );
        assert_eq!(
            redact_url("redis-cluster://:s3cret@a:6379?node=b:6379"),
            "redis-cluster://:***@a:6379?node=b:6379"
        );
        assert_eq!(redact_url("not a url s3cret"), "***");
    }

    #[test]
    fn passwords_holding_hash_or_question_mark_are_masked_whole() {
        for (url, expected) in [
            (
                "redis://user:pa#ss@cache:6379/0",
                "redis://user:***@cache:6379/0",
            ),
            ("redis://:pa?ss@cache/0", "redis://:***@cache/0"),
            ("redis://:a?b#c/d@cache:6379", "redis://:***@cache:6379"),
            (
                "postgres://app:p#w?x@db:5432/jobs?sslmode=require",
                "postgres://app:***@db:5432/jobs?sslmode=require",
            ),
            ("redis://pa#ss@cache", "redis://***@cache"),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, expected, "{url}");
            for secret in ["pa#ss", "pa?ss", "a?b#c", "p#w?x", "ss@", "pa"] {
                if url.contains(secret) && secret != "pa" {
                    assert!(!redacted.contains(secret), "{url} -> {redacted}");
                }
            }
        }
    }
}
