//! Allowed browser origins (`--allowed-origin`): the rule form, its parser
//! and the match against an `Origin` header. Transports check it at the
//! handshake (`handshake.rs`); the configuration checks rules parse.

/// One `--allowed-origin`: `scheme://host[:port]`, where host may start
/// with `*.` to allow any subdomain (not the bare domain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginRule {
    scheme: String,
    host: Host,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
}

impl OriginRule {
    pub fn parse(rule: &str) -> Result<OriginRule, String> {
        let (scheme, host, port) = split_origin(rule)
            .ok_or_else(|| format!("{rule:?} is not an origin like https://app.example.com"))?;
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                Host::Subdomains(format!(".{domain}"))
            }
            Some(_) => return Err(format!("{rule:?}: a wildcard must look like *.example.com")),
            None if host.contains('*') => {
                return Err(format!("{rule:?}: a wildcard must look like *.example.com"));
            }
            None => Host::Exact(host),
        };
        Ok(OriginRule { scheme, host, port })
    }

    /// True when the `Origin` header value matches this rule.
    pub fn allows(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        scheme == self.scheme
            && port == self.port
            && match &self.host {
                Host::Exact(expected) => host == *expected,
                Host::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            }
    }
}

/// `scheme://host[:port]`, lowercased; `None` for anything else (including
/// the `null` origin of sandboxed documents, paths and credentials).
fn split_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, rest) = origin.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            (host, Some(port.parse().ok()?))
        }
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_subdomain() {
        let exact = OriginRule::parse("https://app.example.com").unwrap();
        assert!(exact.allows("https://app.example.com"));
        assert!(exact.allows("HTTPS://App.Example.com"));
        assert!(!exact.allows("http://app.example.com"));
        assert!(!exact.allows("https://app.example.com:8443"));
        assert!(!exact.allows("https://evil-app.example.com"));
        assert!(!exact.allows("null"));

        let wildcard = OriginRule::parse("https://*.example.com").unwrap();
        assert!(wildcard.allows("https://a.example.com"));
        assert!(wildcard.allows("https://a.b.example.com"));
        assert!(!wildcard.allows("https://example.com"));
        assert!(!wildcard.allows("https://evilexample.com"));
        assert!(!wildcard.allows("https://example.com.evil.com"));

        let local = OriginRule::parse("http://localhost:3000").unwrap();
        assert!(local.allows("http://localhost:3000") && !local.allows("http://localhost:3001"));

        for bad in [
            "example.com",
            "https://*",
            "https://a.*.com",
            "ftp://x",
            "https://x/path",
            "*",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
    }
}
