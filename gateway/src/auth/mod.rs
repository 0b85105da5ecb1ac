//! Client authentication: JWT connection tokens.
//!
//! The algorithm is pinned by each configured key ([`keys`]), never taken
//! from the token: `alg: none`, and algorithm confusion (an HS256 token
//! signed with an RSA public key as its secret), are rejected. `exp` is
//! required; `nbf` is checked when present; `iss` and `aud` are required
//! unless the operator opted out (`--jwt-allow-any-issuer`,
//! `--jwt-allow-any-audience`: a token another application got from the
//! same identity provider must not open this one's channels); a token may
//! live at most `--jwt-max-lifetime` when that is set. The keys are read
//! again on SIGHUP ([`Authenticator::reload`]) and a JWKS URL is refetched
//! in the background ([`jwks`]), so a rotation drops no live token.
//!
//! Claims the gateway reads: `sub` (user id; empty for anonymous),
//! `channels` and `publish` (channel patterns the user may subscribe and
//! publish to), `exp`, `iat`, and `info` (any JSON value, at most
//! [`MAX_INFO_LEN`] bytes as written: shown to other members in presence).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation};
use parking_lot::RwLock;
use serde::Deserialize;

use crate::config::Config;

pub mod jwks;
pub mod keys;

use keys::{Key, KeySources};

/// Longest token accepted, in bytes (before any parsing).
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Longest `info` claim accepted, in bytes of JSON text.
pub const MAX_INFO_LEN: usize = 1024;

/// Who a connection is, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; empty for an anonymous user.
    pub user: String,
    /// Patterns of channels the user may subscribe to.
    pub channels: Vec<String>,
    /// Patterns of channels the user may publish to.
    pub publish: Vec<String>,
    /// When the token expires, as Unix seconds.
    pub expires_at: u64,
    /// The `info` claim's JSON text, if any (presence shows it).
    pub info: Option<bytes::Bytes>,
}

impl Identity {
    /// Time left until the token expires (zero if it has).
    pub fn expires_in(&self) -> Duration {
        Duration::from_secs(self.expires_at).saturating_sub(unix_now())
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// The keys in use: those of the flags and files, and the JWKS's.
#[derive(Default)]
struct KeySet {
    local: Vec<Key>,
    remote: Vec<Key>,
    /// False until the JWKS was fetched once (true without a JWKS URL).
    remote_loaded: bool,
}

/// Verifies client tokens.
pub struct Authenticator {
    sources: KeySources,
    keys: RwLock<Arc<KeySet>>,
    pub(crate) jwks: Option<jwks::Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    max_lifetime: Option<Duration>,
}

impl Authenticator {
    /// The authenticator the configuration asks for; `None` when no token
    /// key is configured (authentication off). Reads the key files; the
    /// JWKS is fetched by [`jwks::refresh_loop`], which the node starts.
    pub fn from_config(config: &Config) -> Result<Option<Authenticator>, String> {
        let sources = KeySources {
            secret: config.jwt_secret.clone(),
            secret_file: config.jwt_secret_file.clone(),
            public_keys: config.jwt_public_key.clone(),
        };
        let jwks = match &config.jwt_jwks_url {
            Some(url) => Some(jwks::Jwks::new(url, config.jwt_jwks_refresh)?),
            None => None,
        };
        if sources.is_empty() && jwks.is_none() {
            return Ok(None);
        }
        let local = sources.load()?;
        let keys = KeySet {
            local,
            remote: Vec::new(),
            remote_loaded: jwks.is_none(),
        };
        Ok(Some(Authenticator {
            sources,
            keys: RwLock::new(Arc::new(keys)),
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway: config.jwt_leeway,
            max_lifetime: (!config.jwt_max_lifetime.is_zero()).then_some(config.jwt_max_lifetime),
        }))
    }

    /// Reads the secret and key files again (SIGHUP) and asks for a JWKS
    /// fetch. A file that cannot be read keeps the keys in use.
    pub fn reload(&self) -> Result<usize, String> {
        if let Some(jwks) = &self.jwks {
            jwks.wake.notify_one();
        }
        let local = self.sources.load()?;
        let count = local.len();
        let mut keys = self.keys.write();
        *keys = Arc::new(KeySet {
            local,
            remote: keys.remote.clone(),
            remote_loaded: keys.remote_loaded,
        });
        Ok(count)
    }

    /// Replaces the JWKS's keys (a successful fetch).
    pub(crate) fn set_remote_keys(&self, remote: Vec<Key>) {
        let mut keys = self.keys.write();
        *keys = Arc::new(KeySet {
            local: keys.local.clone(),
            remote,
            remote_loaded: true,
        });
    }

    /// False while a configured JWKS has not been fetched yet (`/readyz`).
    pub fn keys_loaded(&self) -> bool {
        self.keys.read().remote_loaded
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        if token.is_empty() {
            return Err("a token is required".into());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!("token is over {MAX_TOKEN_LEN} bytes"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("invalid token: {e}"))?;
        let keys = self.keys.read().clone();
        let all = || keys.local.iter().chain(&keys.remote);
        // Keys named by the token's `kid`; else the keys without one.
        let named: Vec<&Key> = match &header.kid {
            Some(kid) => all().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&Key> = if named.is_empty() {
            all().filter(|k| k.kid.is_none()).collect()
        } else {
            named
        };
        if candidates.is_empty() {
            if let Some(jwks) = &self.jwks {
                jwks.request_refetch();
            }
            return Err(match (&header.kid, keys.remote_loaded) {
                (_, false) => "the signing keys are not loaded yet; retry shortly".into(),
                (Some(kid), true) => format!("token key id {kid:?} is not known"),
                (None, true) => "token has no key id (`kid`) and every key has one".into(),
            });
        }
        let mut verdict: Option<Result<Claims, String>> = None;
        for key in candidates.iter().filter(|k| k.algorithm == header.alg) {
            let outcome = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(key.algorithm))
                .map(|data| data.claims)
                .map_err(|e| describe(&e));
            let done = outcome.is_ok();
            // A signature error from one key says less than any other
            // error (expired, wrong audience) from the key that matched.
            if done
                || verdict
                    .as_ref()
                    .is_none_or(|v| v.as_ref().err().is_some_and(|e| e.contains("signature")))
            {
                verdict = Some(outcome);
            }
            if done {
                break;
            }
        }
        let claims = verdict.unwrap_or_else(|| {
            Err(format!(
                "token algorithm {:?} is not accepted (the keys verify {})",
                header.alg,
                algorithms(&candidates)
            ))
        })?;
        self.check_lifetime(&claims)?;
        let info = claims.info.map(|raw| raw.get().to_owned());
        if let Some(info) = &info
            && info.len() > MAX_INFO_LEN
        {
            return Err(format!(
                "the token's info claim is {} bytes; at most {MAX_INFO_LEN} are accepted",
                info.len()
            ));
        }
        Ok(Identity {
            user: claims.sub,
            channels: claims.channels,
            publish: claims.publish,
            expires_at: claims.exp,
            info: info.map(bytes::Bytes::from),
        })
    }

    /// `--jwt-max-lifetime`: from `iat` to `exp`, and from now to `exp`.
    fn check_lifetime(&self, claims: &Claims) -> Result<(), String> {
        let Some(max) = self.max_lifetime else {
            return Ok(());
        };
        let allowed = max.as_secs() + self.leeway.as_secs();
        let now = unix_now().as_secs();
        let from_iat = claims.iat.map(|iat| claims.exp.saturating_sub(iat));
        let from_now = claims.exp.saturating_sub(now);
        if from_iat.is_some_and(|l| l > allowed) || from_now > allowed {
            return Err(format!(
                "token lives longer than the {}s --jwt-max-lifetime allows",
                max.as_secs()
            ));
        }
        Ok(())
    }
}

fn algorithms(keys: &[&Key]) -> String {
    let mut names: Vec<String> = keys.iter().map(|k| format!("{:?}", k.algorithm)).collect();
    names.sort();
    names.dedup();
    names.join(", ")
}

fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "token expired".to_string(),
        K::ImmatureSignature => "token not valid yet (nbf)".to_string(),
        K::InvalidSignature => "invalid token signature".to_string(),
        K::InvalidIssuer => "token issuer not accepted".to_string(),
        K::InvalidAudience => "token audience not accepted".to_string(),
        K::MissingRequiredClaim(claim) => format!("token has no `{claim}` claim"),
        _ => format!("invalid token: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn authenticator(configure: impl FnOnce(&mut Config)) -> Authenticator {
        let mut config = Config {
            jwt_secret: Some(SECRET.into()),
            ..Config::default()
        };
        configure(&mut config);
        Authenticator::from_config(&config).unwrap().unwrap()
    }

    #[test]
    fn a_valid_token_names_the_user_and_permissions() {
        let auth = authenticator(|_| {});
        let token = hs256(
            json!({"sub":"42","exp":now() + 60,"channels":["chat:*"],"publish":["chat:1"]}),
            SECRET,
        );
        let identity = auth.verify(&token).unwrap();
        assert_eq!(identity.user, "42");
        assert_eq!(identity.channels, ["chat:*"]);
        assert_eq!(identity.publish, ["chat:1"]);
        assert!(identity.expires_in() > Duration::from_secs(50));
    }

    #[test]
    fn bad_tokens_are_rejected_with_a_reason() {
        let auth = authenticator(|c| c.jwt_leeway = Duration::ZERO);
        let cases = [
            (hs256(json!({"sub":"1","exp":now() - 10}), SECRET), "expired"),
            (hs256(json!({"sub":"1"}), SECRET), "`exp`"),
            (
                hs256(
                    json!({"sub":"1","exp":now() + 60}),
                    "another-secret-another-secret-xx",
                ),
                "signature",
            ),
            (
                hs256(json!({"sub":"1","exp":now() + 60,"nbf":now() + 3600}), SECRET),
                "nbf",
            ),
            ("not.a.token".to_string(), "invalid token"),
            (String::new(), "required"),
            ("x".repeat(MAX_TOKEN_LEN + 1), "over"),
        ];
        for (token, reason) in cases {
            let error = auth.verify(&token).unwrap_err();
            assert!(error.contains(reason), "{reason}: {error}");
        }
    }

    #[test]
    fn alg_none_is_rejected() {
        let auth = authenticator(|_| {});
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = base64_url(format!(r#"{{"sub":"1","exp":{}}}"#, now() + 60).as_bytes());
        assert!(auth.verify(&format!("{header}.{claims}.")).is_err());
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let auth = authenticator(|c| {
            c.jwt_issuer = Some("https://auth.example".into());
            c.jwt_audience = Some("gateway".into());
        });
        let good = hs256(
            json!({"exp":now()+60,"iss":"https://auth.example","aud":"gateway"}),
            SECRET,
        );
        assert!(auth.verify(&good).is_ok());
        let wrong_iss = hs256(
            json!({"exp":now()+60,"iss":"https://evil","aud":"gateway"}),
            SECRET,
        );
        assert!(auth.verify(&wrong_iss).unwrap_err().contains("issuer"));
        let no_aud = hs256(json!({"exp":now()+60,"iss":"https://auth.example"}), SECRET);
        assert!(auth.verify(&no_aud).is_err());
        // Without configured audience, a token's `aud` is not held against it.
        let plain = authenticator(|_| {});
        assert!(
            plain
                .verify(&hs256(json!({"exp":now()+60,"aud":"other"}), SECRET))
                .is_ok()
        );
    }

    #[test]
    fn several_keys_are_tried_and_a_kid_picks_its_key() {
        let old = "0123456789abcdef0123456789abcdef";
        let new = "fedcba9876543210fedcba9876543210";
        let dir = std::env::temp_dir().join(format!("gw-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secrets");
        std::fs::write(&file, format!("{old}\n")).unwrap();
        let auth = authenticator(|c| {
            c.jwt_secret = None;
            c.jwt_secret_file = Some(file.clone());
        });
        let claims = json!({"sub":"1","exp":now() + 60});
        assert!(auth.verify(&hs256(claims.clone(), old)).is_ok());
        assert!(auth.verify(&hs256(claims.clone(), new)).is_err());
        // Rotation: the new secret joins, SIGHUP reloads; both verify.
        std::fs::write(&file, format!("{old}\n{new}\n")).unwrap();
        assert_eq!(auth.reload().unwrap(), 2);
        assert!(auth.verify(&hs256(claims.clone(), old)).is_ok());
        assert!(auth.verify(&hs256(claims.clone(), new)).is_ok());
        // A broken file keeps the keys in use.
        std::fs::write(&file, "short\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.verify(&hs256(claims.clone(), new)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);

        // Keys with a kid are used only for tokens naming it.
        let auth = authenticator(|_| {});
        auth.set_remote_keys(vec![Key {
            kid: Some("k2".into()),
            algorithm: Algorithm::HS256,
            key: jsonwebtoken::DecodingKey::from_secret(new.as_bytes()),
        }]);
        let with_kid = |kid: &str, secret: &str| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.into());
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
        };
        assert!(auth.verify(&with_kid("k2", new)).is_ok());
        assert!(
            auth.verify(&hs256(claims.clone(), new)).is_err(),
            "no kid: only keys without one"
        );
        // An unknown kid falls back to the keys without one.
        assert!(auth.verify(&with_kid("other", SECRET)).is_ok());
    }

    #[test]
    fn the_algorithm_is_the_keys_not_the_tokens() {
        let auth = authenticator(|_| {});
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub":"1","exp":now() + 60}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let error = auth.verify(&hs512).unwrap_err();
        assert!(error.contains("algorithm"), "{error}");
    }

    #[test]
    fn a_maximum_lifetime_refuses_long_lived_tokens() {
        let auth = authenticator(|c| {
            c.jwt_max_lifetime = Duration::from_secs(3600);
            c.jwt_leeway = Duration::ZERO;
        });
        assert!(auth.verify(&hs256(json!({"exp":now() + 600}), SECRET)).is_ok());
        let forever = hs256(json!({"exp": u64::MAX / 2}), SECRET);
        assert!(auth.verify(&forever).unwrap_err().contains("max-lifetime"));
        let long = hs256(json!({"exp":now() + 600,"iat":now() - 7200}), SECRET);
        assert!(auth.verify(&long).is_err(), "issued two hours before expiry");
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
