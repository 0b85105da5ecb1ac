//! permessage-deflate (RFC 7692): what the handshake agrees on, and the
//! compressors and decompressors behind it.
//!
//! The gateway always answers with `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is compressed and inflated
//! on its own, with no sliding window kept between messages. That is what
//! lets one compressed publication be the same bytes for every subscriber
//! (compressed once, shared by the fan-out), and what keeps an idle
//! connection free of deflate state: compressors and decompressors live in
//! a small pool shared by all connections (`crate::compression`) and are
//! taken only for the duration of one message. Holding a client's window between messages
//! would cost about 47 KiB (the inflate window and tables) for every
//! connection, idle or not, for a few percent better ratio on small JSON;
//! it is declined, as RFC 7692 section 7.1.1.2 allows.
//!
//! Offers the gateway cannot honour are declined, one by one, never
//! failing the handshake: an unknown or repeated parameter, a malformed
//! value, `server_max_window_bits=8` (zlib's raw deflate needs at least 9).
//! With no acceptable offer the connection simply runs uncompressed.

/// The extension's token in `Sec-WebSocket-Extensions`.
const TOKEN: &str = "permessage-deflate";

/// What a connection agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// Window bits the server compresses with (9 to 15).
    pub server_window_bits: u8,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` response for this agreement.
    pub fn response(&self, echo_server_bits: bool) -> String {
        let mut response = format!("{TOKEN}; server_no_context_takeover; client_no_context_takeover");
        if echo_server_bits {
            response.push_str(&format!("; server_max_window_bits={}", self.server_window_bits));
        }
        response
    }
}

/// Picks the first offer of `permessage-deflate` in the request's
/// `Sec-WebSocket-Extensions` values that can be honoured, and the response
/// header for it. `None`: run without compression.
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<(Agreed, String)> {
    for offer in offers.into_iter().flat_map(|value| value.split(',')) {
        let mut parts = offer.split(';').map(str::trim);
        if parts.next() != Some(TOKEN) {
            continue;
        }
        if let Some((agreed, echo)) = accept(parts) {
            return Some((agreed, agreed.response(echo)));
        }
    }
    None
}

/// One offer's parameters: the agreement, and whether the response must
/// name `server_max_window_bits`.
fn accept<'a>(params: impl Iterator<Item = &'a str>) -> Option<(Agreed, bool)> {
    let mut seen: Vec<&str> = Vec::new();
    let mut server_bits = None;
    for param in params.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // The client may use a smaller window; inflating with 15 bits
            // reads any of them, so the response need not name it.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            ("server_max_window_bits", Some(bits)) => {
                let bits = window_bits(bits)?;
                if bits < 9 {
                    // zlib cannot deflate raw data with a 256-byte window.
                    return None;
                }
                server_bits = Some(bits);
            }
            _ => return None,
        }
    }
    Some((
        Agreed {
            server_window_bits: server_bits.unwrap_or(15),
        },
        server_bits.is_some(),
    ))
}

/// A window size parameter: 8 to 15, decimal digits only.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 2 {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(offers: &[&str]) -> Option<(u8, String)> {
        negotiate(offers.iter().copied()).map(|(a, r)| (a.server_window_bits, r))
    }

    #[test]
    fn offers_are_accepted_or_declined_one_by_one() {
        let plain = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        // What browsers send.
        assert_eq!(
            agreed(&["permessage-deflate; client_max_window_bits"]),
            Some((15, plain.to_string()))
        );
        assert_eq!(agreed(&["permessage-deflate"]), Some((15, plain.to_string())));
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=10"]),
            Some((10, format!("{plain}; server_max_window_bits=10")))
        );
        // An offer the server cannot honour is skipped for the next one.
        assert_eq!(
            agreed(&["permessage-deflate; server_max_window_bits=8, permessage-deflate"]),
            Some((15, plain.to_string()))
        );
        for declined in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=1x",
            "permessage-deflate; unknown_parameter",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agreed(&[declined]), None, "{declined}");
        }
        assert_eq!(agreed(&[]), None);
    }
}
