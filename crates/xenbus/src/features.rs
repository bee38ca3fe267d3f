//! Reading what the other end published: `feature-*` flags, numbers such
//! as `max-ring-page-order` and `multi-queue-max-queues`, and the rings
//! and event channels of a frontend (`ring-ref` or `ring-ref0..N`,
//! `event-channel`, per queue under `queue-N/` when there are several),
//! as `xen/io/blkif.h` and `netif.h` describe them.

use std::io::{Read, Write};

use xenstore::client::{Client, ClientError, Tx};
use xenstore::XsError;

/// A key that is there but does not say what it must.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// Reading failed.
    #[error(transparent)]
    Xs(#[from] ClientError),
    /// The value is not what the protocol allows.
    #[error("{key}: bad value {value:?}")]
    Bad {
        /// The key.
        key: String,
        /// What it held.
        value: String,
    },
}

/// The number at `dir/key`, if the key exists.
pub fn number<S: Read + Write>(
    xs: &mut Client<S>,
    dir: &str,
    key: &str,
) -> Result<Option<u64>, FeatureError> {
    let path = format!("{dir}/{key}");
    match xs.read(Tx::NONE, &path) {
        Ok(v) => {
            let text = String::from_utf8_lossy(&v).into_owned();
            text.trim()
                .parse()
                .map(Some)
                .map_err(|_| FeatureError::Bad {
                    key: path,
                    value: text,
                })
        }
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `dir/feature-<name>` is set (a missing key, or 0, is not).
pub fn feature<S: Read + Write>(
    xs: &mut Client<S>,
    dir: &str,
    name: &str,
) -> Result<bool, FeatureError> {
    Ok(number(xs, dir, &format!("feature-{name}"))?.is_some_and(|v| v != 0))
}

/// One queue's rings and event channel, as a frontend published them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueRings {
    /// Grant references of the ring's pages, in order.
    pub ring_refs: Vec<u32>,
    /// The frontend's event-channel port.
    pub event_channel: u32,
}

/// The rings of every queue the frontend at `dir` published: with
/// `multi-queue-num-queues` N > 1 under `queue-0` .. `queue-<N-1>`, else in
/// `dir` itself; a ring of `ring-page-order` k > 0 has `ring-ref0` ..
/// `ring-ref<2^k - 1>`, else one `ring-ref`. `max_order` and `max_queues`
/// are what the backend offered: more is refused.
pub fn queue_rings<S: Read + Write>(
    xs: &mut Client<S>,
    dir: &str,
    max_order: u32,
    max_queues: u32,
) -> Result<Vec<QueueRings>, FeatureError> {
    let bad = |key: &str, value: u64| FeatureError::Bad {
        key: format!("{dir}/{key}"),
        value: value.to_string(),
    };
    let queues = number(xs, dir, "multi-queue-num-queues")?.unwrap_or(1);
    if queues == 0 || queues > u64::from(max_queues) {
        return Err(bad("multi-queue-num-queues", queues));
    }
    let order = number(xs, dir, "ring-page-order")?.unwrap_or(0);
    if order > u64::from(max_order) {
        return Err(bad("ring-page-order", order));
    }
    let mut out = Vec::new();
    for q in 0..queues {
        let qdir = if queues == 1 {
            dir.to_string()
        } else {
            format!("{dir}/queue-{q}")
        };
        let mut refs = Vec::new();
        if order == 0 {
            refs.push(required(xs, &qdir, "ring-ref")?);
        } else {
            for i in 0..(1u32 << order) {
                refs.push(required(xs, &qdir, &format!("ring-ref{i}"))?);
            }
        }
        let event_channel = required(xs, &qdir, "event-channel")?;
        out.push(QueueRings {
            ring_refs: refs,
            event_channel,
        });
    }
    Ok(out)
}

fn required<S: Read + Write>(
    xs: &mut Client<S>,
    dir: &str,
    key: &str,
) -> Result<u32, FeatureError> {
    let v = number(xs, dir, key)?.ok_or_else(|| FeatureError::Bad {
        key: format!("{dir}/{key}"),
        value: "missing".into(),
    })?;
    u32::try_from(v).map_err(|_| FeatureError::Bad {
        key: format!("{dir}/{key}"),
        value: v.to_string(),
    })
}
