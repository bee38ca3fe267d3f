//! Body of the `xs_wire` fuzz target, here so ordinary tests replay its
//! corpus on stable: a byte stream from a hostile client, cut at a point
//! the fuzzer picks, must frame identically either way, and every message's
//! path and permission strings must parse or be refused without panicking.

use crate::{Decoder, Path, Perms};

/// Frames `data` (its first byte picks a cut) and parses what it can.
pub fn xs_wire(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).min(stream.len());
    let whole = Decoder::new().feed(stream);
    let mut d = Decoder::new();
    let split = d.feed(&stream[..cut]).and_then(|mut a| {
        a.extend(d.feed(&stream[cut..])?);
        Ok(a)
    });
    assert_eq!(whole, split, "framing depends on how the stream is cut");
    for m in whole.unwrap_or_default() {
        let parts = m.strings();
        if let Some(first) = parts.first() {
            if let Ok(p) = Path::parse(first, 5, true) {
                let _ = p.parent();
                let _ = p.depth_below(&Path::root());
            }
        }
        let _ = Perms::parse(parts.iter().skip(1).copied());
        if let Ok(bytes) = m.encode() {
            assert_eq!(Decoder::new().feed(&bytes), Ok(vec![m]));
        }
    }
}
