//! Where the listeners bind (`GRPC_ADDR`, `HTTP_ADDR`, `MANAGEMENT_ADDR`).

use std::fmt;

use super::ConfigError;

pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8000";

/// Where a listener binds: `host:port`, the host an IP address (`0.0.0.0`,
/// `[::1]`) or a name resolved when the listener binds (`localhost`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// Parses `host:port`; an IPv6 host in brackets.
    pub fn parse(raw: &str) -> Option<Self> {
        let (host, port) = raw.trim().rsplit_once(':')?;
        let port = port.parse().ok()?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']')?,
            None if host.contains(':') => return None,
            None => host,
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'));
        valid.then(|| Self {
            host: host.to_owned(),
            port,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether only this machine can connect: a loopback address
    /// (127.0.0.0/8, ::1) or `localhost`. Any other name counts as reachable
    /// from elsewhere.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The listen address in variable `name`; `default` when unset.
pub(super) fn address(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: &str,
) -> Result<ListenAddr, ConfigError> {
    let raw = get(name).unwrap_or_else(|| default.to_owned());
    ListenAddr::parse(&raw).ok_or_else(|| {
        ConfigError::new(
            name,
            format!("must be host:port such as 0.0.0.0:50051 or localhost:50051, got {raw:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_accept_ips_and_host_names() {
        for (raw, shown) in [
            ("localhost:50051", "localhost:50051"),
            ("0.0.0.0:8000", "0.0.0.0:8000"),
            ("[::1]:8000", "[::1]:8000"),
            ("[::]:0", "[::]:0"),
            (" my-host.internal:80 ", "my-host.internal:80"),
        ] {
            let addr = ListenAddr::parse(raw).unwrap_or_else(|| panic!("{raw}"));
            assert_eq!(addr.to_string(), shown);
        }
        assert_eq!(ListenAddr::parse("[::1]:8000").unwrap().host(), "::1");
        for bad in [
            "localhost",
            ":80",
            "host:port",
            "::1:80",
            "a b:80",
            "h:70000",
            "[::1:80",
        ] {
            assert_eq!(ListenAddr::parse(bad), None, "{bad}");
        }
    }
}
