//! Cross-site writes on the HTTP API: a browser page of another site must
//! not make a logged-in operator's browser cancel, retry or create jobs.
//!
//! Browsers say where a request comes from: `Sec-Fetch-Site` (every current
//! browser) and `Origin` (on every cross-origin request and on every
//! non-GET request). A state-changing request (any method but GET, HEAD and
//! OPTIONS) is refused with 403 and the JSON error body when
//! `Sec-Fetch-Site` is `cross-site` or `same-site` (another subdomain is
//! another origin too), or when `Origin` names a host other than the one
//! the request was sent to. Requests without those headers (curl, grpcurl's
//! HTTP cousins, other services) are not from a browser and pass, and so
//! do the dashboard's own requests (same origin).

use axum::{
    extract::Request,
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tonic::Code;

use super::status::HttpError;

/// Why a request was refused, or `None` when it may go on.
pub fn cross_site_refusal(method: &Method, headers: &HeaderMap) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("").trim().to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Some(format!(
                "a {method} from another site is refused (Sec-Fetch-Site: {site}); call the API from the dashboard's own origin or from a client that is not a browser"
            ));
        }
    }
    let origin = headers.get(header::ORIGIN)?;
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .unwrap_or("");
    if !origin_host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        None
    } else {
        Some(format!(
            "a {method} from the origin {origin:?} is refused: the request was sent to {host:?}; call the API from the dashboard's own origin or from a client that is not a browser"
        ))
    }
}

/// The middleware: refuses cross-site writes with 403 before anything else
/// runs.
pub async fn same_origin_writes(request: Request, next: Next) -> Response {
    match cross_site_refusal(request.method(), request.headers()) {
        None => next.run(request).await,
        Some(reason) => {
            HttpError::new(StatusCode::FORBIDDEN, Code::PermissionDenied, reason).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn writes_from_other_sites_are_refused_and_everything_else_passes() {
        let host = ("host", "jobs.example:8000");
        for (method, pairs, refused) in [
            (Method::POST, vec![host], false),
            (
                Method::POST,
                vec![host, ("sec-fetch-site", "same-origin")],
                false,
            ),
            (Method::POST, vec![host, ("sec-fetch-site", "none")], false),
            (
                Method::POST,
                vec![host, ("sec-fetch-site", "cross-site")],
                true,
            ),
            (
                Method::POST,
                vec![host, ("sec-fetch-site", "Same-Site")],
                true,
            ),
            (
                Method::GET,
                vec![host, ("sec-fetch-site", "cross-site")],
                false,
            ),
            (
                Method::POST,
                vec![host, ("origin", "http://jobs.example:8000")],
                false,
            ),
            (
                Method::POST,
                vec![host, ("origin", "https://JOBS.example:8000")],
                false,
            ),
            (
                Method::POST,
                vec![host, ("origin", "http://evil.example")],
                true,
            ),
            (
                Method::POST,
                vec![host, ("origin", "http://jobs.example:8001")],
                true,
            ),
            (Method::POST, vec![host, ("origin", "null")], true),
            (
                Method::DELETE,
                vec![("origin", "http://jobs.example:8000")],
                true,
            ),
            (
                Method::HEAD,
                vec![host, ("origin", "http://evil.example")],
                false,
            ),
        ] {
            let refusal = cross_site_refusal(&method, &headers(&pairs));
            assert_eq!(
                refusal.is_some(),
                refused,
                "{method} {pairs:?}: {refusal:?}"
            );
        }
    }
}
