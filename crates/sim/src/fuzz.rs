//! Body of the `hv_proto` fuzz target, here so that ordinary tests replay
//! its corpus on stable: any datagram a process can send the hypervisor
//! must decode without panicking, and whatever decodes must re-encode to
//! something that decodes to the same message.

use crate::proto::{Reply, Request};

/// Decodes `data` as a request and as a reply.
pub fn hv_proto(data: &[u8]) {
    if let Ok(req) = Request::decode(data) {
        assert_eq!(Request::decode(&req.encode()), Ok(req));
    }
    if let Ok(rep) = Reply::decode(data) {
        assert_eq!(Reply::decode(&rep.encode()), Ok(rep));
    }
}
