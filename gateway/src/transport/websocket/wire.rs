//! RFC 6455 frames on the wire: the header a client sends (parsed and
//! checked here), the header the server writes, unmasking, and which close
//! codes a client may send.
//!
//! Client frames must be masked; server frames are not, so a server frame
//! is the same bytes for every client it goes to.

/// Frame opcodes (RFC 6455 section 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    /// Close, ping and pong: at most 125 bytes, never fragmented.
    pub fn is_control(opcode: u8) -> bool {
        opcode & 0x8 != 0
    }
}

/// Most payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A frame header as a client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// The "per-message compressed" bit with permessage-deflate.
    pub rsv1: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    pub len: u64,
    /// Bytes the header took.
    pub size: usize,
}

/// Why a header is not acceptable: close with 1002.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame(pub &'static str);

/// Parses a client frame header from the start of `buf`: `Ok(None)` when
/// more bytes are needed. Checks what the header alone can tell: reserved
/// bits (RSV1 only where `rsv1_allowed`), known opcodes, masking, control
/// frame rules, the 64-bit length's top bit.
pub fn parse_header(buf: &[u8], rsv1_allowed: bool) -> Result<Option<Header>, BadFrame> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    let fin = first & 0x80 != 0;
    let rsv1 = first & 0x40 != 0;
    let opcode = first & 0x0F;
    if first & 0x30 != 0 {
        return Err(BadFrame("reserved bits RSV2/RSV3 set"));
    }
    if rsv1 && !rsv1_allowed {
        return Err(BadFrame("RSV1 set without a negotiated extension"));
    }
    if !matches!(
        opcode,
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY | opcode::CLOSE | opcode::PING | opcode::PONG
    ) {
        return Err(BadFrame("unknown opcode"));
    }
    if second & 0x80 == 0 {
        return Err(BadFrame("client frames must be masked"));
    }
    let (len, mut at) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(BadFrame("payload length with its top bit set"));
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode::is_control(opcode) {
        if !fin {
            return Err(BadFrame("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD {
            return Err(BadFrame("control frame over 125 bytes"));
        }
        if rsv1 {
            return Err(BadFrame("compressed control frame"));
        }
    }
    let Some(key) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [key[0], key[1], key[2], key[3]];
    at += 4;
    Ok(Some(Header {
        fin,
        rsv1,
        opcode,
        mask,
        len,
        size: at,
    }))
}

/// Unmasks `payload` in place; `offset` is how many payload bytes of the
/// frame came before this slice (the mask continues across reads).
pub fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let shift = offset % 4;
    let key = u32::from_ne_bytes([
        mask[shift],
        mask[(shift + 1) % 4],
        mask[(shift + 2) % 4],
        mask[(shift + 3) % 4],
    ]);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ key;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let key = key.to_ne_bytes();
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// Appends a server frame header (FIN set, unmasked) for a payload of
/// `len` bytes.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, rsv1: bool, len: usize) {
    out.push(0x80 | if rsv1 { 0x40 } else { 0 } | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// A whole server frame: header and payload.
#[cfg(test)]
pub fn frame(opcode: u8, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    write_header(&mut out, opcode, rsv1, payload.len());
    out.extend_from_slice(payload);
    out
}

/// Close codes a client may send (RFC 6455 section 7.4 and the IANA
/// registry): 1000-1003, 1007-1014, and 3000-4999 for libraries and
/// applications. 1004 is reserved; 1005, 1006 and 1015 are never sent on
/// the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn headers_parse_incrementally_and_unmask() {
        let bytes = masked(0x81, b"hello");
        for cut in 0..6 {
            assert_eq!(parse_header(&bytes[..cut], false), Ok(None), "{cut} bytes");
        }
        let header = parse_header(&bytes, false).unwrap().unwrap();
        assert_eq!(
            (header.fin, header.opcode, header.len, header.size),
            (true, 1, 5, 6)
        );
        let mut payload = bytes[6..].to_vec();
        unmask(&mut payload, header.mask, 0);
        assert_eq!(payload, b"hello");
        // Split unmasking continues the key.
        let long = masked(0x82, &[7u8; 300]);
        let header = parse_header(&long, false).unwrap().unwrap();
        assert_eq!((header.len, header.size), (300, 8));
        let mut payload = long[8..].to_vec();
        let (a, b) = payload.split_at_mut(7);
        unmask(a, header.mask, 0);
        unmask(b, header.mask, 7);
        assert!(payload.iter().all(|&b| b == 7));
    }

    #[test]
    fn bad_headers_are_refused() {
        let refused = |bytes: &[u8], rsv1| parse_header(bytes, rsv1).err().map(|e| e.0);
        assert!(refused(&[0xA1, 0x80, 0, 0, 0, 0], false).is_some(), "RSV2");
        assert!(
            refused(&[0xC1, 0x80, 0, 0, 0, 0], false).is_some(),
            "RSV1 unnegotiated"
        );
        assert!(
            refused(&[0xC1, 0x80, 0, 0, 0, 0], true).is_none(),
            "RSV1 negotiated"
        );
        assert!(refused(&[0x83, 0x80, 0, 0, 0, 0], false).is_some(), "opcode 3");
        assert!(refused(&[0x81, 0x00], false).is_some(), "unmasked");
        assert!(
            refused(&[0x09, 0x80, 0, 0, 0, 0], false).is_some(),
            "fragmented ping"
        );
        assert!(
            refused(&[0x89, 0xFE, 0, 126, 0, 0, 0, 0], false).is_some(),
            "126-byte ping"
        );
        assert!(
            refused(&[0xC9, 0x80, 0, 0, 0, 0], true).is_some(),
            "compressed ping"
        );
        let mut huge = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&[0; 4]);
        assert!(refused(&huge, false).is_some(), "63-bit length");
    }

    #[test]
    fn server_headers_use_the_shortest_length() {
        assert_eq!(frame(opcode::TEXT, false, b"hi"), [0x81, 2, b'h', b'i']);
        assert_eq!(&frame(opcode::BINARY, true, &[0; 200])[..4], [0xC2, 126, 0, 200]);
        assert_eq!(
            &frame(opcode::BINARY, false, &[0; 70_000])[..10],
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert!(is_valid_close_code(1000) && is_valid_close_code(4999) && is_valid_close_code(3000));
        assert!(is_valid_close_code(1012) && is_valid_close_code(1014));
        for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }
}
