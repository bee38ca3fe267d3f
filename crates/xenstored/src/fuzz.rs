//! Body of the `xenstored_requests` fuzz target, here so that ordinary
//! tests replay its corpus on stable: arbitrary bytes from two clients (a
//! privileged one and an unprivileged domain) fed to the daemon in pieces
//! the fuzzer chooses. Nothing may panic, every reply must be well framed,
//! and what is queued for a client stays bounded.

use xenstore::wire::Decoder;

use crate::server::{Core, MAX_OUTPUT_PRIVILEGED};
use crate::store::Caller;

/// Feeds `data` to a daemon: each piece is `[who, len, bytes...]`.
pub fn requests(data: &[u8]) {
    let mut core = Core::new();
    let dom0 = core.connect(Caller::DOM0);
    let guest = core.connect(Caller {
        domid: 5,
        privileged: false,
        target: None,
    });
    let mut decoders = [Decoder::new(), Decoder::new()];
    let mut rest = data;
    // Bounded: each piece consumes at least two bytes.
    while let [who, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (piece, next) = tail.split_at(n);
        let (id, d) = if who % 2 == 0 {
            (dom0, &mut decoders[0])
        } else {
            (guest, &mut decoders[1])
        };
        core.input(id, piece);
        if let Some(out) = core.output(id) {
            assert!(
                out.len() <= MAX_OUTPUT_PRIVILEGED,
                "output grew past its bound"
            );
            let bytes = std::mem::take(out);
            assert!(
                d.feed(&bytes).is_ok(),
                "the daemon sent a malformed message"
            );
        }
        rest = next;
    }
}
