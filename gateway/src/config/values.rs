//! Parsers and printers for setting values: durations, sizes, network
//! prefixes, secrets that must not be printed, and the default node id.

use std::time::Duration;

/// Checks a web address the node fetches (the JWKS): `http://` or
/// `https://` with a host.
pub fn parse_fetch_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("{text:?} must be an http:// or https:// URL")),
    }
}

/// Parses `25s`, `500ms`, `1m 30s` (humantime) or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 25s or 500ms"))
}

/// Parses `65536`, `64KiB`, `64kb`, `1MiB`, `1m`: binary units, case-insensitive.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use e.g. 65536, 64KiB or 1MiB"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?}; use B, KiB, MiB or GiB")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a switch: `on`/`off` (also `true`/`false`, `yes`/`no`, `1`/`0`).
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(format!("{other:?} is not on or off")),
    }
}

/// Parses an IP address or a CIDR network (`10.0.0.0/8`, `192.0.2.7`).
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))
}

/// Shows a Redis URL without its password.
pub fn redacted_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:<redacted>@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Hostname plus a random suffix, so two processes on one host differ.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    let host = if host.is_empty() {
        String::from("node")
    } else {
        host
    };
    let suffix: String = (0..6)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect();
    format!("{host}-{suffix}")
}

/// The soft limit on open files of this process, if it can be read.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Serde helpers for printing the configuration (`--print-config`).
pub mod print {
    use std::time::Duration;

    pub fn duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn switch<S: serde::Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if *on { "on" } else { "off" })
    }

    pub fn secrets<S: serde::Serializer>(keys: &[super::super::ApiKey], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(keys.iter().map(|key| key.redacted()))
    }

    pub fn secret<S: serde::Serializer>(secret: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match secret {
            Some(_) => s.serialize_str("<redacted>"),
            None => s.serialize_none(),
        }
    }

    pub fn url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(url) => s.serialize_str(&super::redacted_url(url)),
            None => s.serialize_none(),
        }
    }

    pub fn urls<S: serde::Serializer>(urls: &[String], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(urls.iter().map(|u| super::redacted_url(u)))
    }

    pub fn networks<S: serde::Serializer>(nets: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(ToString::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_networks_parse() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64kb"), Ok(65536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            parse_network("10.0.0.0/8").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            parse_network("192.0.2.7").map(|n| n.to_string()),
            Ok("192.0.2.7/32".into())
        );
        assert!(parse_network("not-an-ip").is_err());
        assert_eq!(
            (parse_switch("on"), parse_switch("OFF"), parse_switch("true")),
            (Ok(true), Ok(false), Ok(true))
        );
        assert!(parse_switch("maybe").is_err());
    }

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redacted_url("rediss://user:pw@h:1"),
            "rediss://user:<redacted>@h:1"
        );
        assert_eq!(redacted_url("redis://:pw@h:1/2"), "redis://:<redacted>@h:1/2");
        assert_eq!(redacted_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn the_open_files_limit_is_readable_here() {
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
