//! The keys client tokens may be signed with, and where they come from.
//!
//! Every key carries the one algorithm it verifies, fixed by its kind, never
//! by a token: an HS256 secret (`--jwt-secret`, or each line of
//! `--jwt-secret-file`), an RSA (RS256) or P-256 (ES256) public key from a
//! PEM file (`--jwt-public-key`, repeatable), or a key of a JSON Web Key Set
//! (`--jwt-jwks-url`), whose `kid` names it. A token is checked against the
//! keys whose `kid` equals its own; keys without a `kid` (secrets and PEM
//! files) are tried for any token of their algorithm, so rotating a file
//! key is: add the new file, restart or SIGHUP, then remove the old one.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// The JWKS `kid`; `None` for keys from flags and files (tried for
    /// every token of their algorithm).
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// Where the configured keys are read from (again on SIGHUP).
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub public_keys: Vec<PathBuf>,
}

impl KeySources {
    pub fn is_empty(&self) -> bool {
        self.secret.is_none() && self.secret_file.is_none() && self.public_keys.is_empty()
    }

    /// Reads every key the flags and files name.
    pub fn load(&self) -> Result<Vec<Key>, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &self.secret {
            keys.push(hs256(secret.as_bytes()));
        }
        if let Some(path) = &self.secret_file {
            keys.extend(read_secrets(path)?);
        }
        for path in &self.public_keys {
            keys.push(read_public_key(path)?);
        }
        Ok(keys)
    }
}

impl std::fmt::Debug for Key {
    /// The key material stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn hs256(secret: &[u8]) -> Key {
    Key {
        kid: None,
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(secret),
    }
}

/// One secret per line (at least 32 bytes each; blank lines and lines
/// starting with `#` are skipped): during a rotation the file holds the
/// old and the new secret.
fn read_secrets(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let secret = line.trim_ascii();
        if secret.is_empty() || secret.starts_with(b"#") {
            continue;
        }
        if secret.len() < 32 {
            return Err(format!(
                "every secret in {} must be at least 32 bytes",
                path.display()
            ));
        }
        keys.push(hs256(secret));
    }
    if keys.is_empty() {
        return Err(format!("{} holds no secret", path.display()));
    }
    Ok(keys)
}

fn read_public_key(path: &Path) -> Result<Key, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (key, algorithm) = match (DecodingKey::from_rsa_pem(&pem), DecodingKey::from_ec_pem(&pem)) {
        (Ok(key), _) => (key, Algorithm::RS256),
        (_, Ok(key)) => (key, Algorithm::ES256),
        (Err(e), _) => {
            return Err(format!(
                "{} is not an RSA or EC public key in PEM form: {e}",
                path.display()
            ));
        }
    };
    Ok(Key {
        kid: None,
        algorithm,
        key,
    })
}

/// The signing keys of a JSON Web Key Set (RFC 7517). Keys for encryption
/// (`use: enc`), symmetric keys (a published set must not hold secrets),
/// and keys of unsupported types are skipped; a set with no usable key is
/// an error, so a broken set never replaces a good one.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
            _ => None,
        };
        let Some(by_type) = by_type else { continue };
        // A stated `alg` must fit the key's type (RS256 for an RSA key may
        // say RS512 or PS256; it may not say HS256).
        let stated = jwk
            .common
            .key_algorithm
            .and_then(|a| format!("{a:?}").parse::<Algorithm>().ok());
        let algorithm = match stated {
            Some(stated) if family(stated) == family(by_type) => stated,
            Some(_) => continue,
            None => by_type,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the key set holds no usable signing key".into());
    }
    Ok(keys)
}

fn family(algorithm: Algorithm) -> u8 {
    use Algorithm::*;
    match algorithm {
        HS256 | HS384 | HS512 => 0,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => 1,
        ES256 | ES384 => 2,
        EdDSA => 3,
        _ => u8::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_set_keeps_signing_keys_only() {
        let set = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"s"},
            {"kty":"EC","crv":"P-256","kid":"ec","use":"sig",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"enc","use":"enc",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"liar","alg":"HS256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let keys = parse_jwks(set).expect("one usable key");
        let kept: Vec<(Option<&str>, Algorithm)> =
            keys.iter().map(|k| (k.kid.as_deref(), k.algorithm)).collect();
        assert_eq!(kept, [(Some("ec"), Algorithm::ES256)]);
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn a_secret_file_holds_one_secret_per_line() {
        let dir = std::env::temp_dir().join(format!("gw-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets");
        std::fs::write(
            &path,
            format!("# old, then new\n{}\n\n{}\n", "a".repeat(32), "b".repeat(40)),
        )
        .unwrap();
        assert_eq!(read_secrets(&path).unwrap().len(), 2);
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_secrets(&path).unwrap_err().contains("32 bytes"));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(read_secrets(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
