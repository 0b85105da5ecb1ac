//! Properties that must hold for any input, checked by the fuzz targets in
//! `proto/fuzz/` (libFuzzer, run by CI) and by replaying their seed corpus
//! in `cargo test`. Each function panics when a property is broken.

use bytes::Bytes;

use crate::{ChannelName, channel, envelope, json, pattern, protobuf};

/// Any bytes: the JSON decoder answers (never panics), and what it accepts
/// survives a trip through the protobuf encoding unchanged.
pub fn json_command(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(command) = json::decode_command(text) {
        let again = protobuf::decode_command(Bytes::from(protobuf::encode_command(&command)));
        assert_eq!(again.as_ref(), Ok(&command), "round trip of {command:?}");
    }
}

/// Any bytes: the protobuf decoder answers, and round-trips what it accepts.
pub fn protobuf_command(data: &[u8]) {
    if let Ok(command) = protobuf::decode_command(Bytes::copy_from_slice(data)) {
        let again = protobuf::decode_command(Bytes::from(protobuf::encode_command(&command)));
        assert_eq!(again.as_ref(), Ok(&command));
    }
}

/// Any bytes from the broker: the envelope decoder answers, and what it
/// accepts re-encodes to an equal envelope.
pub fn envelope(data: &[u8]) {
    if let Ok(decoded) = envelope::decode(Bytes::copy_from_slice(data)) {
        let bytes = envelope::encode(&decoded.publication, &decoded.node, decoded.published_at_us);
        let again = envelope::decode(Bytes::from(bytes)).expect("re-encoded envelope decodes");
        assert_eq!(again, decoded);
    }
}

/// Any string: validation agrees with the written rule (1 to 255 bytes of
/// `A-Z a-z 0-9 _ - . : @ / = #`), and the namespace is the part before the
/// first `:`.
pub fn channel_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-.:@/=#".contains(&b);
    let expected = (1..=channel::MAX_CHANNEL_LEN).contains(&name.len()) && name.bytes().all(allowed);
    match ChannelName::parse(name) {
        Ok(parsed) => {
            assert!(expected, "accepted {name:?}");
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.namespace(), name.split_once(':').map(|(ns, _)| ns));
        }
        Err(_) => assert!(!expected, "refused {name:?}"),
    }
}

/// Any pattern and name (split at the first NUL): the matcher agrees with a
/// reference dynamic-programming matcher.
pub fn pattern(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, name) = text.split_once('\0').unwrap_or((text, ""));
    if pattern.len() > 512 || name.len() > 512 {
        return;
    }
    assert_eq!(
        pattern::matches(pattern, name),
        reference_match(pattern.as_bytes(), name.as_bytes()),
        "{pattern:?} ~ {name:?}"
    );
}

/// `*` any run, `?` any one byte, else literal; O(p × n) table.
fn reference_match(p: &[u8], n: &[u8]) -> bool {
    let mut row = vec![false; n.len() + 1];
    row[0] = true;
    for &pc in p {
        let mut next = vec![false; n.len() + 1];
        next[0] = pc == b'*' && row[0];
        for j in 1..=n.len() {
            next[j] = match pc {
                b'*' => next[j - 1] || row[j],
                b'?' => row[j - 1],
                c => row[j - 1] && n[j - 1] == c,
            };
        }
        row = next;
    }
    row[n.len()]
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Replays every committed seed through its property.
    #[test]
    fn the_seed_corpus_holds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        type Property = fn(&[u8]);
        let targets: [(&str, Property); 5] = [
            ("json_command", super::json_command),
            ("protobuf_command", super::protobuf_command),
            ("envelope", super::envelope),
            ("channel_name", super::channel_name),
            ("pattern", super::pattern),
        ];
        for (target, property) in targets {
            let dir = root.join(target);
            let mut seeds = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                property(&std::fs::read(&path).unwrap());
                seeds += 1;
            }
            assert!(seeds > 0, "no seeds for {target}");
        }
    }

    #[test]
    fn the_reference_matcher_is_the_documented_one() {
        assert!(super::reference_match(b"a*c", b"abbc"));
        assert!(!super::reference_match(b"a?c", b"abbc"));
        assert!(super::reference_match(b"*", b""));
    }
}
