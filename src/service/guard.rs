//! Who may talk to the API, by where the request says it comes from and goes
//! to.
//!
//! The API has no token by default on loopback, so any web page the operator
//! visits can send it requests. Two checks keep such pages out:
//!
//! - **Host.** A page on `attacker.example` whose name the attacker re-points
//!   at 127.0.0.1 (DNS rebinding) is same-origin with itself, so the browser
//!   lets it read the answers; but its requests still say
//!   `Host: attacker.example`. Only the names this server is reached by are
//!   served: the listen address, the loopback names, and the public URL's host.
//! - **Origin.** A page on another site may still *send* a form or a "simple"
//!   fetch (no preflight) to `http://127.0.0.1:8080`; browsers label it with
//!   `Origin` and `Sec-Fetch-Site`. A state-changing request labelled as coming
//!   from anywhere but this origin is refused. A request with neither header
//!   (curl, scripts) is not a browser's and is allowed.

use std::net::SocketAddr;

use axum::http::uri::{Authority, Scheme};
use axum::http::{HeaderMap, Method, Uri, header};

/// A host name and port, as compared: lower-case, IPv6 in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: Option<u16>,
}

impl HostPort {
    fn parse(text: &str) -> Option<HostPort> {
        let authority: Authority = text.trim().parse().ok()?;
        // An authority with credentials (`user@host`) is no Host header.
        if authority.as_str().contains('@') {
            return None;
        }
        Some(HostPort { host: authority.host().to_ascii_lowercase(), port: authority.port_u16() })
    }

    /// The origin's host and port (the scheme's default port when none is
    /// written), from `https://host[:port]`.
    fn from_origin(origin: &str) -> Option<HostPort> {
        let uri: Uri = origin.trim().parse().ok()?;
        let default = default_port(uri.scheme()?)?;
        let authority = uri.authority()?;
        Some(HostPort {
            host: authority.host().to_ascii_lowercase(),
            port: Some(authority.port_u16().unwrap_or(default)),
        })
    }

    /// Whether a Host header names this host and port. A Host without a port
    /// says the client used its scheme's default port, and behind a
    /// TLS-terminating proxy that may be either 80 or 443.
    fn named_by(&self, given: &HostPort) -> bool {
        self.host == given.host
            && match given.port {
                Some(port) => self.port == Some(port),
                None => matches!(self.port, Some(80 | 443)),
            }
    }
}

fn default_port(scheme: &Scheme) -> Option<u16> {
    if *scheme == Scheme::HTTP {
        Some(80)
    } else if *scheme == Scheme::HTTPS {
        Some(443)
    } else {
        None
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The request names a host this server is not reached by.
    Host(String),
    /// A browser sent a state-changing request from another site.
    CrossSite(String),
}

/// The names this server answers to.
#[derive(Debug, Clone)]
pub(super) struct ServedHosts {
    names: Vec<HostPort>,
    /// The public URL's origin, which a TLS-terminating proxy may put in front
    /// of a loopback Host.
    public_origin: Option<HostPort>,
}

impl ServedHosts {
    /// The loopback names and the bound address on its port, the listen
    /// address as configured (e.g. `localhost:8080`), and the public URL's
    /// host.
    pub(super) fn new(bound: SocketAddr, listen: Option<&str>, public_url: Option<&str>) -> ServedHosts {
        let port = Some(bound.port());
        let mut names: Vec<HostPort> = ["localhost", "127.0.0.1", "[::1]"]
            .into_iter()
            .map(|host| HostPort { host: host.to_string(), port })
            .collect();
        let bound_host = match bound {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        names.push(HostPort { host: bound_host, port });
        if let Some(mut listen) = listen.and_then(HostPort::parse) {
            // Port 0 asks for any port: the one bound is the one served.
            if listen.port.is_none_or(|p| p == 0) {
                listen.port = port;
            }
            names.push(listen);
        }
        let public_origin = public_url.and_then(HostPort::from_origin);
        names.extend(public_origin.clone());
        ServedHosts { names, public_origin }
    }

    /// Checks the request's Host (and the authority of an absolute-form
    /// request target, which a server must prefer to Host); for methods that
    /// change state, checks it comes from this origin.
    pub(super) fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let host_header = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let named: Vec<&str> = uri.authority().map(Authority::as_str).into_iter().chain(host_header).collect();
        if named.is_empty() {
            return Err(Refusal::Host("the request names no host".into()));
        }
        let mut served = None;
        for name in named {
            match HostPort::parse(name).filter(|given| self.names.iter().any(|n| n.named_by(given))) {
                Some(given) => served = Some(given),
                None => {
                    return Err(Refusal::Host(format!(
                        "host {name:?} is not served here; use the listen address, localhost, or the host of \
                         FLOWCAST_PUBLIC_URL"
                    )));
                }
            }
        }
        if method.is_safe() {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && matches!(site.trim(), "cross-site" | "same-site")
        {
            return Err(Refusal::CrossSite(format!("a {site} request may not change anything here")));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let text = origin.to_str().unwrap_or_default();
            let from = HostPort::from_origin(text);
            // The scheme is not compared: behind a TLS-terminating proxy this
            // server cannot tell which one the browser used, and nothing else
            // listens on this host and port.
            let ours = from.as_ref().is_some_and(|from| {
                served.as_ref().is_some_and(|host| from.named_by(host)) || self.public_origin.as_ref() == Some(from)
            });
            if !ours {
                return Err(Refusal::CrossSite(format!("origin {text:?} may not change anything here")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> ServedHosts {
        ServedHosts::new(
            "127.0.0.1:8080".parse().unwrap(),
            Some("127.0.0.1:8080"),
            Some("https://flowcast.example.com"),
        )
    }

    fn request(method: Method, host: &str, extra: &[(&str, &str)]) -> Result<(), Refusal> {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        for (k, v) in extra {
            headers.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        served().check(&method, &Uri::from_static("/api/runs/1/cancel"), &headers)
    }

    #[test]
    fn hosts_are_matched_by_name_and_port() {
        for ok in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "flowcast.example.com"] {
            assert_eq!(request(Method::GET, ok, &[]), Ok(()), "{ok}");
        }
        assert_eq!(request(Method::GET, "flowcast.example.com:443", &[]), Ok(()));
        for refused in ["attacker.example:8080", "localhost:9090", "localhost", "flowcast.example.com:8443", "a@b"] {
            assert!(matches!(request(Method::GET, refused, &[]), Err(Refusal::Host(_))), "{refused}");
        }
    }

    #[test]
    fn state_changes_from_other_sites_are_refused_and_from_this_origin_allowed() {
        let post = |extra: &[(&str, &str)]| request(Method::POST, "127.0.0.1:8080", extra);
        assert_eq!(post(&[]), Ok(()), "no browser headers: a script");
        assert_eq!(post(&[("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")]), Ok(()));
        assert_eq!(post(&[("origin", "https://flowcast.example.com")]), Ok(()), "through the public URL's proxy");
        for bad in ["https://evil.example", "http://127.0.0.1:9999", "http://localhost:8080", "null", "junk"] {
            assert!(matches!(post(&[("origin", bad)]), Err(Refusal::CrossSite(_))), "{bad}");
        }
        for site in ["cross-site", "same-site"] {
            assert!(matches!(post(&[("sec-fetch-site", site)]), Err(Refusal::CrossSite(_))), "{site}");
        }
        // Reads are guarded by Host alone: the browser keeps other sites from
        // reading the answers.
        assert_eq!(request(Method::GET, "127.0.0.1:8080", &[("origin", "https://evil.example")]), Ok(()));
    }

    #[test]
    fn a_listen_name_is_served_on_the_bound_port() {
        let hosts = ServedHosts::new("[::1]:4000".parse().unwrap(), Some("localhost:0"), None);
        let mut headers = HeaderMap::new();
        for (host, ok) in [("[::1]:4000", true), ("localhost:4000", true), ("localhost:0", false)] {
            headers.insert(header::HOST, host.parse().unwrap());
            assert_eq!(hosts.check(&Method::GET, &Uri::from_static("/"), &headers).is_ok(), ok, "{host}");
        }
    }
}
