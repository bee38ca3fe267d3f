//! xenbus: how a Xen device comes and goes. Two ends, a frontend in the
//! guest and a backend in dom0 (or a driver domain), each publish a
//! `state` in xenstore and react to the other's, as Linux's
//! `xenbus_probe_{frontend,backend}` and its drivers do.
//!
//! * [`State`]: `XenbusState` (`xen/io/xenbus.h`).
//! * [`machine`]: the two ends as pure state machines (events in, actions
//!   out), written after Linux's xen-blkback `frontend_changed` and
//!   xen-blkfront `blkback_changed`, so that they can be tested against
//!   every order of events.
//! * [`paths`]: the directories of `docs/misc/xenstore-paths.pandoc`
//!   (`/local/domain/<fe>/device/<type>/<devid>` and
//!   `/local/domain/<be>/backend/<type>/<fe>/<devid>`) and what a
//!   toolstack writes there, with xl's permissions.
//! * [`driver`]: backend and frontend driver traits and the watch-driven
//!   runners that feed each device's machine and perform its actions.
//! * [`features`]: reading the other end's `feature-*`, `multi-queue-*`,
//!   `ring-ref*` and `event-channel*` keys.

#![forbid(unsafe_code)]

pub mod driver;
pub mod features;
pub mod machine;
pub mod paths;
mod state;

pub use state::State;
