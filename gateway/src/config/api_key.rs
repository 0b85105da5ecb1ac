//! API keys and what each may do. An entry is `KEY` (every operation) or
//! `[scope scope …] KEY` (only the operations of those scopes), in
//! `--api-key`, `GATEWAY_API_KEY`, the key file and the config file alike,
//! so a key for a publishing service cannot log users out.

use std::fmt;

/// A group of API operations a key may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `POST /api/publish`, `/api/broadcast`, `/api/batch`.
    Publish,
    /// `GET /api/history`, `/api/presence`, `/api/presence/stats`,
    /// `/api/info`, `/api/channels`.
    Read,
    /// `POST /api/history/remove`.
    History,
    /// `POST /api/disconnect`, `/api/subscribe`, `/api/unsubscribe`.
    Connections,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Publish, Scope::Read, Scope::History, Scope::Connections];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::History => "history",
            Scope::Connections => "connections",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }
}

/// One API key and its scopes.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub secret: String,
    /// One bit per [`Scope`].
    scopes: u8,
}

impl ApiKey {
    /// A key with every scope.
    pub fn unrestricted(secret: impl Into<String>) -> ApiKey {
        ApiKey {
            secret: secret.into(),
            scopes: Scope::ALL.iter().fold(0, |bits, scope| bits | scope.bit()),
        }
    }

    /// Reads `KEY` or `[scope …] KEY`.
    pub fn parse(entry: &str) -> Result<ApiKey, String> {
        let entry = entry.trim();
        let Some(rest) = entry.strip_prefix('[') else {
            if entry.is_empty() {
                return Err("API keys must not be empty".into());
            }
            return Ok(ApiKey::unrestricted(entry));
        };
        let Some((names, secret)) = rest.split_once(']') else {
            return Err("a scoped API key is `[scope …] KEY`: the `]` is missing".into());
        };
        let secret = secret.trim();
        if secret.is_empty() {
            return Err("API keys must not be empty".into());
        }
        let mut scopes = 0;
        for name in names.split([' ', '|']).filter(|n| !n.is_empty()) {
            let scope = Scope::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|s| s.name()).collect();
                format!("unknown API key scope {name:?} (known: {})", known.join(", "))
            })?;
            scopes |= scope.bit();
        }
        if scopes == 0 {
            return Err("a scoped API key needs at least one scope".into());
        }
        Ok(ApiKey {
            secret: secret.to_owned(),
            scopes,
        })
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    /// The entry as `--print-config` shows it: scopes, never the secret.
    pub fn redacted(&self) -> String {
        if Scope::ALL.iter().all(|s| self.allows(*s)) {
            return "<redacted>".into();
        }
        let names: Vec<&str> = Scope::ALL
            .iter()
            .filter(|s| self.allows(**s))
            .map(|s| s.name())
            .collect();
        format!("[{}] <redacted>", names.join(" "))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_and_without_scopes() {
        let plain = ApiKey::parse(" s3cret ").unwrap();
        assert_eq!(plain.secret, "s3cret");
        assert!(Scope::ALL.iter().all(|s| plain.allows(*s)));
        let scoped = ApiKey::parse("[publish read] pub-key=").unwrap();
        assert_eq!(scoped.secret, "pub-key=");
        assert!(scoped.allows(Scope::Publish) && scoped.allows(Scope::Read));
        assert!(!scoped.allows(Scope::Connections) && !scoped.allows(Scope::History));
        assert_eq!(scoped.redacted(), "[publish read] <redacted>");
        assert_eq!(format!("{plain:?}"), "<redacted>");
        for bad in ["", "[publish]", "[] key", "[publish key", "[admin] key"] {
            assert!(ApiKey::parse(bad).is_err(), "{bad:?}");
        }
    }
}
