//! Client tokens for tests: HS256 with a secret, ES256 and RS256 with
//! throwaway key pairs (EC from rcgen, RSA from the openssl command).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret the tests configure.
pub const SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 token for `sub` with `claims` merged in, valid for `ttl` seconds.
pub fn hs256(sub: &str, ttl: i64, claims: Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        sub,
        ttl,
        claims,
    )
}

pub fn sign(algorithm: Algorithm, key: &EncodingKey, sub: &str, ttl: i64, claims: Value) -> String {
    let mut body = json!({"sub": sub, "exp": now() as i64 + ttl});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), claims.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(&Header::new(algorithm), &body, key).expect("token")
}

/// A key pair on disk: the private key PEM and the public key PEM path.
pub struct KeyPair {
    pub private_pem: Vec<u8>,
    pub public_path: PathBuf,
    pub public_pem: Vec<u8>,
}

/// A P-256 key pair for ES256.
pub fn ec_key_pair(dir: &Path) -> KeyPair {
    let key = rcgen::KeyPair::generate().expect("EC key");
    let public_path = dir.join("ec-public.pem");
    std::fs::write(&public_path, key.public_key_pem()).expect("write key");
    KeyPair {
        private_pem: key.serialize_pem().into_bytes(),
        public_pem: key.public_key_pem().into_bytes(),
        public_path,
    }
}

/// A 2048-bit RSA key pair for RS256 (made with the openssl command).
pub fn rsa_key_pair(dir: &Path) -> KeyPair {
    let private_path = dir.join("rsa-private.pem");
    let public_path = dir.join("rsa-public.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private_path)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed")
        .success()
        && std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private_path)
            .arg("-out")
            .arg(&public_path)
            .status()
            .expect("openssl runs")
            .success();
    assert!(ok, "openssl made an RSA key pair");
    KeyPair {
        private_pem: std::fs::read(&private_path).expect("read key"),
        public_pem: std::fs::read(&public_path).expect("read key"),
        public_path,
    }
}
