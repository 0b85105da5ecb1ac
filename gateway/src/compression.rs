//! Raw deflate for messages compressed one at a time, with no context
//! between them (what permessage-deflate with no context takeover sends):
//! compress a message once, whoever it goes to, and inflate one with a
//! bound on what it inflates to.
//!
//! Compressors (about 370 KiB each with a 32 KiB window) and decompressors
//! (about 47 KiB) are pooled and shared by every connection of the node; a
//! message takes one for as long as it is being compressed or inflated, so
//! no connection holds any deflate state of its own, idle or not.

use std::sync::Arc;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use parking_lot::Mutex;

/// What a sync flush ends with; stripped when sending, appended before
/// inflating (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];
/// Compressors and decompressors kept for reuse, each (the pool only
/// ever needs about as many as there are threads compressing at once).
const POOL: usize = 16;

/// Why an inbound message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message size limit (close 1009).
    TooBig,
    /// It is not valid deflate data (close 1007).
    Corrupt,
}

/// The compressors and decompressors every connection of a node shares.
pub struct Deflater {
    level: Compression,
    /// Per window bits 9..=15.
    compressors: [Mutex<Vec<Compress>>; 7],
    decompressors: Mutex<Vec<Decompress>>,
    /// Messages compressed and sent so (`gateway_compressions_total`): a
    /// publication shared by its subscribers counts once per encoding.
    compressions: metrics::Counter,
}

impl Deflater {
    /// Compression at `level` (0-9), counting each message compressed in
    /// `compressions`.
    pub fn new(level: u32, compressions: metrics::Counter) -> Arc<Deflater> {
        Arc::new(Deflater {
            level: Compression::new(level.min(9)),
            compressors: Default::default(),
            decompressors: Mutex::new(Vec::new()),
            compressions,
        })
    }

    /// `data` compressed as one message with a `window_bits` window and no
    /// context (the sync flush's tail removed), or `None` when that would
    /// not make it smaller.
    pub fn compress(&self, data: &[u8], window_bits: u8) -> Option<Bytes> {
        let bits = window_bits.clamp(9, 15);
        let pool = &self.compressors[usize::from(bits - 9)];
        let mut compressor = pool
            .lock()
            .pop()
            .unwrap_or_else(|| Compress::new_with_window_bits(self.level, false, bits));
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let result = deflate(&mut compressor, data, &mut out);
        compressor.reset();
        let mut pool = pool.lock();
        if pool.len() < POOL {
            pool.push(compressor);
        }
        drop(pool);
        result.ok()?;
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() >= data.len() {
            return None;
        }
        self.compressions.increment(1);
        Some(Bytes::from(out))
    }

    /// Inflates one compressed message, stopping as soon as the output
    /// exceeds `limit` bytes (without inflating the rest).
    pub fn inflate(&self, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
        let mut decompressor = self
            .decompressors
            .lock()
            .pop()
            .unwrap_or_else(|| Decompress::new_with_window_bits(false, 15));
        let result = inflate(&mut decompressor, compressed, limit);
        decompressor.reset(false);
        let mut pool = self.decompressors.lock();
        if pool.len() < POOL {
            pool.push(decompressor);
        }
        result
    }
}

fn deflate(compressor: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> Result<(), flate2::CompressError> {
    let start = compressor.total_in();
    loop {
        let consumed = (compressor.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        compressor.compress_vec(&data[consumed..], out, FlushCompress::Sync)?;
        let consumed = (compressor.total_in() - start) as usize;
        // Done once every byte went in and the flush did not run out of
        // room (with room left, the sync flush is complete).
        if consumed == data.len() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

fn inflate(decompressor: &mut Decompress, compressed: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut out = Vec::with_capacity((compressed.len() * 3).min(limit + 1).max(64));
    // The message, then the tail its sender removed.
    for input in [compressed, &TAIL[..]] {
        let start = decompressor.total_in();
        loop {
            let consumed = (decompressor.total_in() - start) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                // Never more room than the limit allows, plus one byte to
                // see it being passed.
                let room = out.capacity().max(256).min(limit + 1 - out.len());
                out.reserve_exact(room);
            }
            let before = (decompressor.total_in(), out.len());
            let status = decompressor
                .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            match status {
                // A final block inside a message: what follows is not
                // part of the stream (RFC 7692 allows BFINAL only at the end).
                Status::StreamEnd => {
                    if (decompressor.total_in() - start) as usize != input.len() && input.len() > TAIL.len() {
                        return Err(InflateError::Corrupt);
                    }
                    return Ok(out);
                }
                Status::Ok | Status::BufError => {
                    if (decompressor.total_in(), out.len()) == before && out.len() < out.capacity() {
                        // No progress with room to spare: the input is spent.
                        break;
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_identical_input_compresses_identically() {
        let deflater = Deflater::new(6, metrics::Counter::noop());
        let text =
            br#"{"type":"message","channel":"news","data":{"headline":"hello hello hello hello"}}"#.repeat(8);
        let a = deflater.compress(&text, 15).expect("compresses");
        let b = deflater.compress(&text, 15).expect("compresses");
        assert_eq!(a, b, "no context: the same bytes every time");
        assert!(a.len() * 3 < text.len());
        assert_eq!(deflater.inflate(&a, 1 << 20).unwrap(), text);
        let small_window = deflater.compress(&text, 9).expect("compresses");
        assert_eq!(deflater.inflate(&small_window, 1 << 20).unwrap(), text);
        assert_eq!(deflater.compress(b"x", 15), None, "not smaller: sent as is");
    }

    #[test]
    fn bombs_stop_at_the_limit_and_garbage_is_refused() {
        let deflater = Deflater::new(9, metrics::Counter::noop());
        let zeros = vec![0u8; 10 << 20];
        let bomb = deflater.compress(&zeros, 15).expect("compresses");
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        assert_eq!(deflater.inflate(&bomb, 64 * 1024), Err(InflateError::TooBig));
        assert_eq!(
            deflater.inflate(&[0xFF, 0xFF, 0xFF, 0x00, 0x13], 1 << 20),
            Err(InflateError::Corrupt)
        );
        // The pooled decompressor is clean afterwards.
        let ok = deflater.compress(&b"abcabcabcabcabcabc".repeat(10), 15).unwrap();
        assert_eq!(
            deflater.inflate(&ok, 1 << 20).unwrap(),
            b"abcabcabcabcabcabc".repeat(10)
        );
    }
}
