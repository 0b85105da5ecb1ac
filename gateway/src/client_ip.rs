//! Which address a connection comes from, for per-IP limits and logs.
//!
//! The TCP peer is believed unless it is a configured trusted proxy
//! (`--trusted-proxy`). From a trusted proxy the gateway takes, in order:
//! - a PROXY protocol header (v1 text or v2 binary), read before anything
//!   else when `--proxy-protocol` is on: its source address;
//! - the `X-Forwarded-For` header, walked from the right (what the nearest
//!   proxy appended) to the left: trusted proxies are skipped, and the first
//!   entry that is not one is the client. Entries may carry a port
//!   (`203.0.113.5:4444`, `[2001:db8::1]:443`). An entry that is not an
//!   address (`unknown`, garbage) stops the walk: the client is then the
//!   last trusted hop, never an entry further left (which the client
//!   itself could have written).
//!
//! Nothing an untrusted peer sends changes its address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;
use ipnet::IpNet;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// True when `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&canonical(ip)))
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client address of an HTTP request that arrived from `peer`.
pub fn from_request(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("unknown"))
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            // Not an address: nothing to its left can be trusted.
            return client;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, with or without a port
/// (`1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok());
        return port_ok
            .then(|| inside.parse::<Ipv6Addr>().ok())
            .flatten()
            .map(|v6| canonical(IpAddr::V6(v6)));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, port) = entry.split_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The key per-IP limits count under: an IPv4 address, or the IPv6
/// network of `v6_prefix` bits around the address (one host usually holds
/// a whole /64, so counting /128s would let it open as many connections as
/// it has addresses).
pub fn limit_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (from the specification).
const V1_MAX: usize = 107;

/// Reads a PROXY protocol header (v1 or v2) from the start of `stream` and
/// returns the source address it names (`None` for `LOCAL`/`UNKNOWN`).
pub async fn read_proxy_header(stream: &mut TcpStream) -> Result<Option<IpAddr>, String> {
    let mut start = [0u8; 12];
    stream
        .read_exact(&mut start)
        .await
        .map_err(|e| format!("reading the PROXY header: {e}"))?;
    if start == V2_SIGNATURE {
        let mut head = [0u8; 4];
        stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("reading the PROXY v2 header: {e}"))?;
        let length = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut body = vec![0u8; length];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("reading the PROXY v2 addresses: {e}"))?;
        return parse_v2(head[0], head[1], &body);
    }
    if !start.starts_with(b"PROXY ") {
        return Err("expected a PROXY protocol header from a trusted proxy".into());
    }
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err("PROXY v1 header too long".into());
        }
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("reading the PROXY v1 header: {e}"))?;
        line.push(byte);
    }
    parse_v1(&line)
}

fn parse_v1(line: &[u8]) -> Result<Option<IpAddr>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "PROXY v1 header is not text".to_string())?;
    let mut parts = text.trim_end().split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("PROXY"), Some("UNKNOWN"), _) => Ok(None),
        (Some("PROXY"), Some("TCP4" | "TCP6"), Some(source)) => source
            .parse()
            .map(Some)
            .map_err(|_| format!("PROXY v1 source {source:?} is not an address")),
        _ => Err("malformed PROXY v1 header".into()),
    }
}

fn parse_v2(version_command: u8, family: u8, body: &[u8]) -> Result<Option<IpAddr>, String> {
    if version_command >> 4 != 2 {
        return Err("unsupported PROXY protocol version".into());
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL: the proxy's own health check
        1 => {}
        _ => return Err("unknown PROXY v2 command".into()),
    }
    match family >> 4 {
        1 if body.len() >= 12 => Ok(Some(IpAddr::V4(Ipv4Addr::new(
            body[0], body[1], body[2], body[3],
        )))),
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Ok(Some(IpAddr::V6(Ipv6Addr::from(octets))))
        }
        0 => Ok(None),
        _ => Err("PROXY v2 address block too short or of an unknown family".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // Untrusted peer: the header is ignored.
        assert_eq!(from_request(stranger, &xff("1.2.3.4"), &trusted), stranger);
        // Trusted: the rightmost untrusted address (the left could be forged).
        assert_eq!(
            from_request(proxy, &xff("6.6.6.6, 198.51.100.7, 10.9.9.9"), &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(from_request(proxy, &HeaderMap::new(), &trusted), proxy);
        assert_eq!(from_request(proxy, &xff("garbage"), &trusted), proxy);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Ports and brackets are parsed, not skipped (skipping them let the
        // client's forged leftmost entry through).
        assert_eq!(
            from_request(proxy, &xff("6.6.6.6, 203.0.113.5:4444"), &trusted),
            ip("203.0.113.5")
        );
        assert_eq!(
            from_request(proxy, &xff("6.6.6.6, [2001:db8::5]:443, 10.0.0.1:80"), &trusted),
            ip("2001:db8::5")
        );
        assert_eq!(
            from_request(proxy, &xff("6.6.6.6,2001:db8::7"), &trusted),
            ip("2001:db8::7")
        );
        // `unknown` stops the walk at the last trusted hop: never the left.
        assert_eq!(from_request(proxy, &xff("6.6.6.6, unknown"), &trusted), proxy);
        assert_eq!(
            from_request(proxy, &xff("6.6.6.6, unknown, 10.0.0.9"), &trusted),
            ip("10.0.0.9")
        );
        assert_eq!(
            from_request(proxy, &xff("6.6.6.6, 1.2.3.4:99999"), &trusted),
            proxy
        );
        // IPv6 limits count per /64 (by default), IPv4 per address.
        assert_eq!(limit_key(ip("2001:db8:1:2:a::1"), 64), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8:1:2:ffff::9"), 64), ip("2001:db8:1:2::"));
        assert_eq!(limit_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(limit_key(ip("203.0.113.5"), 64), ip("203.0.113.5"));
        assert_eq!(limit_key(ip("::ffff:203.0.113.5"), 64), ip("203.0.113.5"));
        // IPv4-mapped IPv6 peers are recognised.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(is_trusted(mapped, &trusted));
    }

    #[test]
    fn proxy_headers_parse() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n"),
            Ok(Some("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"),
            Ok(Some("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(None));
        assert!(parse_v1(b"PROXY TCP4 nonsense\r\n").is_err());
        assert!(parse_v1(b"GET / HTTP/1.1\r\n").is_err());

        let v4 = [192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 0x01, 0xbb];
        assert_eq!(parse_v2(0x21, 0x11, &v4), Ok(Some("192.0.2.1".parse().unwrap())));
        assert_eq!(parse_v2(0x20, 0x00, &[]), Ok(None));
        assert!(parse_v2(0x21, 0x11, &v4[..4]).is_err());
        assert!(parse_v2(0x11, 0x11, &v4).is_err());
    }

    #[tokio::test]
    async fn proxy_headers_are_read_off_the_stream_exactly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut v2 = V2_SIGNATURE.to_vec();
            v2.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 55, 10, 0, 0, 1, 0, 80, 1, 187]);
            v2.extend_from_slice(b"GET /");
            s.write_all(&v2).await.unwrap();
            s
        });
        let (mut server, _) = listener.accept().await.unwrap();
        assert_eq!(
            read_proxy_header(&mut server).await,
            Ok(Some("192.0.2.55".parse().unwrap()))
        );
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET /", "nothing after the header was consumed");
        drop(client.await);
    }
}
