//! The device directories of `docs/misc/xenstore-paths.pandoc`, and what a
//! toolstack writes there to add and remove a device, as libxl's
//! `libxl__device_generic_add` does.

use std::io::{Read, Write};

use xenstore::client::{Client, ClientError, Tx};
use xenstore::{Access, Perm, Perms, XsError};

use crate::State;

/// `/local/domain/<domid>`.
pub fn domain_dir(domid: u16) -> String {
    format!("/local/domain/{domid}")
}

/// One device: its kind (`vbd`, `vif`, `pci`, `console`, ...), its id
/// within the kind, and the domains of its two ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// The kind, as the directory names it.
    pub kind: String,
    /// The device id (for a vbd, the number of `xen-vbd-interface(7)`).
    pub devid: u32,
    /// The guest, where the frontend runs.
    pub frontend: u16,
    /// Where the backend runs (dom0, or a driver domain).
    pub backend: u16,
}

impl Device {
    /// `/local/domain/<fe>/device/<kind>/<devid>`.
    pub fn frontend_dir(&self) -> String {
        format!(
            "{}/device/{}/{}",
            domain_dir(self.frontend),
            self.kind,
            self.devid
        )
    }

    /// `/local/domain/<be>/backend/<kind>/<fe>/<devid>`.
    pub fn backend_dir(&self) -> String {
        format!(
            "{}/backend/{}/{}/{}",
            domain_dir(self.backend),
            self.kind,
            self.frontend,
            self.devid
        )
    }

    /// The device a backend directory is for, if `path` is one
    /// (`/local/domain/<be>/backend/<kind>/<fe>/<devid>`).
    pub fn from_backend_dir(path: &str) -> Option<Device> {
        let rest = path.strip_prefix("/local/domain/")?;
        let mut parts = rest.split('/');
        let backend = parts.next()?.parse().ok()?;
        if parts.next()? != "backend" {
            return None;
        }
        let kind = parts.next()?.to_string();
        let frontend = parts.next()?.parse().ok()?;
        let devid = parts.next()?.parse().ok()?;
        if parts.next().is_some() || kind.is_empty() {
            return None;
        }
        Some(Device {
            kind,
            devid,
            frontend,
            backend,
        })
    }

    /// Creates both directories in one transaction (retried on a
    /// conflict), as xl does: the frontend's is owned by the guest and
    /// readable by the backend's domain, the backend's the other way
    /// round; each names the other end (`backend`, `backend-id`;
    /// `frontend`, `frontend-id`), both start `Initialising`, the backend
    /// is `online`; then the kind's own keys.
    pub fn add<S: Read + Write>(
        &self,
        xs: &mut Client<S>,
        backend_keys: &[(&str, String)],
        frontend_keys: &[(&str, String)],
    ) -> Result<(), ClientError> {
        let (fe, be) = (self.frontend_dir(), self.backend_dir());
        let perms = |owner: u16, reader: u16| {
            Perms::new(vec![
                Perm {
                    domid: owner,
                    access: Access::None,
                },
                Perm {
                    domid: reader,
                    access: Access::Read,
                },
            ])
        };
        let fe_perms = perms(self.frontend, self.backend)?;
        let be_perms = perms(self.backend, self.frontend)?;
        let state = State::Initialising.value();
        in_transaction(xs, |xs, t| {
            // In the transaction that makes it: two at once cannot both
            // find the device absent (both write its nodes: one conflicts,
            // and sees it on its retry).
            if xs.read(t, &be).is_ok() || xs.read(t, &fe).is_ok() {
                return Err(ClientError::Xs(XsError::Exist));
            }
            xs.mkdir(t, &fe)?;
            xs.set_perms(t, &fe, &fe_perms)?;
            xs.write(t, &format!("{fe}/backend"), be.as_bytes())?;
            xs.write(
                t,
                &format!("{fe}/backend-id"),
                self.backend.to_string().as_bytes(),
            )?;
            xs.write(t, &format!("{fe}/state"), &state)?;
            for (k, v) in frontend_keys {
                xs.write(t, &format!("{fe}/{k}"), v.as_bytes())?;
            }
            xs.mkdir(t, &be)?;
            xs.set_perms(t, &be, &be_perms)?;
            xs.write(t, &format!("{be}/frontend"), fe.as_bytes())?;
            xs.write(
                t,
                &format!("{be}/frontend-id"),
                self.frontend.to_string().as_bytes(),
            )?;
            xs.write(t, &format!("{be}/online"), b"1")?;
            xs.write(t, &format!("{be}/state"), &state)?;
            for (k, v) in backend_keys {
                xs.write(t, &format!("{be}/{k}"), v.as_bytes())?;
            }
            Ok(())
        })
    }

    /// Asks the backend to let the device go, as `xl block-detach` does:
    /// `online` 0 and the backend's state `Closing`.
    pub fn request_removal<S: Read + Write>(&self, xs: &mut Client<S>) -> Result<(), ClientError> {
        let be = self.backend_dir();
        in_transaction(xs, |xs, t| {
            xs.write(t, &format!("{be}/online"), b"0")?;
            xs.write(t, &format!("{be}/state"), &State::Closing.value())?;
            Ok(())
        })
    }

    /// Removes both directories (either may be gone already: xenstored
    /// removes a dead guest's nodes itself).
    pub fn remove<S: Read + Write>(&self, xs: &mut Client<S>) -> Result<(), ClientError> {
        let (fe, be) = (self.frontend_dir(), self.backend_dir());
        in_transaction(xs, |xs, t| {
            for dir in [&fe, &be] {
                match xs.rm(t, dir) {
                    Ok(()) | Err(ClientError::Xs(XsError::NoEnt)) => {}
                    Err(e) => return Err(e),
                }
            }
            // The parents that are left empty, as libxl's path cleanup
            // removes them: `backend/<kind>/<fe>`, `backend/<kind>`,
            // `backend`, and the guest's `device/<kind>`.
            let be_root = format!("{}/backend", domain_dir(self.backend));
            let fe_kind = format!("{}/device/{}", domain_dir(self.frontend), self.kind);
            for parent in [
                format!("{be_root}/{}/{}", self.kind, self.frontend),
                format!("{be_root}/{}", self.kind),
                be_root.clone(),
                fe_kind,
            ] {
                if xs.directory(t, &parent).is_ok_and(|c| c.is_empty()) {
                    xs.rm(t, &parent)?;
                }
            }
            Ok(())
        })
    }

    /// The state the backend's `state` node says (`Unknown` if it has
    /// none).
    pub fn backend_state<S: Read + Write>(&self, xs: &mut Client<S>) -> State {
        read_state(xs, &format!("{}/state", self.backend_dir()))
    }

    /// The state the frontend's `state` node says.
    pub fn frontend_state<S: Read + Write>(&self, xs: &mut Client<S>) -> State {
        read_state(xs, &format!("{}/state", self.frontend_dir()))
    }
}

/// The state at `path` (`Unknown` if it cannot be read).
pub fn read_state<S: Read + Write>(xs: &mut Client<S>, path: &str) -> State {
    xs.read(Tx::NONE, path)
        .map(|v| State::parse(&v))
        .unwrap_or(State::Unknown)
}

/// Runs `f` in a transaction, again on `EAGAIN` (at most 64 times, backing
/// off a little more each time).
pub fn in_transaction<S: Read + Write, T>(
    xs: &mut Client<S>,
    mut f: impl FnMut(&mut Client<S>, Tx) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    for attempt in 0..64u64 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_micros(50 * attempt.min(40)));
        }
        let t = xs.transaction_start()?;
        let r = match f(xs, t) {
            Ok(r) => r,
            Err(e) => {
                let _ = xs.transaction_end(t, false);
                return Err(e);
            }
        };
        match xs.transaction_end(t, true) {
            Ok(()) => return Ok(r),
            Err(ClientError::Xs(XsError::Again)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Xs(XsError::Again))
}
