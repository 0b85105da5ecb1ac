//! Client authentication: JWT connection tokens.
//!
//! The algorithm is pinned by configuration, never taken from the token:
//! `--jwt-secret`/`--jwt-secret-file` accept HS256 only, `--jwt-public-key`
//! RS256 (an RSA key) or ES256 (a P-256 key) only. So `alg: none` and
//! algorithm confusion (an HS256 token signed with the RSA public key as its
//! secret) are rejected. `exp` is required; `nbf`, `iss` and `aud` are
//! checked when present or configured, with a small leeway.
//!
//! Claims the gateway reads: `sub` (user id; empty for anonymous),
//! `channels` and `publish` (channel patterns the user may subscribe and
//! publish to), `exp`, and `info` (any JSON value, at most
//! [`MAX_INFO_LEN`] bytes as written: shown to other members in presence).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::Config;

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
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(self.expires_at).saturating_sub(now)
    }
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    info: Option<Box<serde_json::value::RawValue>>,
}

/// Verifies client tokens.
pub struct Authenticator {
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// The authenticator the configuration asks for; `None` when no token
    /// key is configured (authentication off).
    pub fn from_config(config: &Config) -> Result<Option<Authenticator>, String> {
        let (key, algorithm) = if let Some(secret) = &config.jwt_secret {
            (DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
        } else if let Some(path) = &config.jwt_secret_file {
            let secret = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let secret = secret.trim_ascii();
            if secret.len() < 32 {
                return Err(format!(
                    "the secret in {} must be at least 32 bytes",
                    path.display()
                ));
            }
            (DecodingKey::from_secret(secret), Algorithm::HS256)
        } else if let Some(path) = &config.jwt_public_key {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            match (DecodingKey::from_rsa_pem(&pem), DecodingKey::from_ec_pem(&pem)) {
                (Ok(key), _) => (key, Algorithm::RS256),
                (_, Ok(key)) => (key, Algorithm::ES256),
                (Err(e), _) => {
                    return Err(format!(
                        "{} is not an RSA or EC public key in PEM form: {e}",
                        path.display()
                    ));
                }
            }
        } else {
            return Ok(None);
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &config.jwt_issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Authenticator { key, validation }))
    }

    /// The algorithm tokens must use.
    pub fn algorithm(&self) -> Algorithm {
        self.validation.algorithms[0]
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, String> {
        if token.is_empty() {
            return Err("a token is required".into());
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!("token is over {MAX_TOKEN_LEN} bytes"));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => "token expired".to_string(),
                K::ImmatureSignature => "token not valid yet (nbf)".to_string(),
                K::InvalidSignature => "invalid token signature".to_string(),
                K::InvalidAlgorithm => format!("token algorithm is not {:?}", self.algorithm()),
                K::InvalidIssuer => "token issuer not accepted".to_string(),
                K::InvalidAudience => "token audience not accepted".to_string(),
                K::MissingRequiredClaim(claim) => format!("token has no `{claim}` claim"),
                _ => format!("invalid token: {e}"),
            }
        })?;
        let claims = data.claims;
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

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
