//! The two ends of a device as pure state machines: an [`Event`] in, the
//! [`Action`]s to take out, in order. The runner that owns the xenstore
//! connection and the device's resources performs them; when a `Setup` or
//! a `Connect` fails it says so ([`Backend::failed`], [`Frontend::failed`])
//! and the end goes to `Closing`, as Linux's `xenbus_dev_fatal` does.
//!
//! Watches fire "something changed" and the reader reads the current value,
//! so an end may see the other jump over states (Linux's "two watches fire
//! in close succession and we miss the intermediate value"): every rule
//! below holds whatever was skipped.

use crate::State;

/// What happened to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The other end's `state` now says this.
    Peer(State),
    /// The other end is gone: its domain died or its directory vanished.
    PeerGone,
    /// The toolstack is taking the device away (backend: it wrote `online`
    /// 0 and our state `Closing`; frontend: it removed our directory).
    Remove,
}

/// What the runner must do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write our `state` node.
    SetState(State),
    /// Frontend: allocate and grant the rings, allocate the event
    /// channels, write `ring-ref*`, `event-channel*` and `protocol`.
    Setup,
    /// Backend: read the frontend's keys, map its rings, bind its event
    /// channels and start serving. Frontend: start using the device.
    Connect,
    /// Release everything `Setup` and `Connect` took (unmap, unbind, end
    /// grants).
    Disconnect,
    /// The device is gone for good: forget it.
    Unregister,
}

/// The backend end, as Linux's xen-blkback `frontend_changed` runs it.
#[derive(Clone, Debug)]
pub struct Backend {
    state: State,
    peer: State,
    online: bool,
    holds: bool,
    gone: bool,
    /// Taking over a device another backend had: the frontend's
    /// `Connected` (and its rings) are the old backend's until it
    /// publishes again.
    stale: bool,
}

impl Default for Backend {
    fn default() -> Self {
        Backend::new()
    }
}

impl Backend {
    /// A backend the toolstack has just made (`state` 1, `online` 1).
    pub fn new() -> Backend {
        Backend {
            state: State::Initialising,
            peer: State::Unknown,
            online: true,
            holds: false,
            gone: false,
            stale: false,
        }
    }

    /// A backend taking over a device a backend before it (one that
    /// died) had probed or connected: after [`probe`](Self::probe) it
    /// waits for the frontend to publish its rings again, whatever state
    /// the frontend shows now.
    pub fn taking_over() -> Backend {
        Backend {
            stale: true,
            ..Backend::new()
        }
    }

    /// Our state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the device's resources are held (between `Connect` and
    /// `Disconnect`).
    pub fn holds(&self) -> bool {
        self.holds
    }

    /// Whether the device is unregistered.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    fn set(&mut self, s: State, out: &mut Vec<Action>) {
        if self.state != s {
            self.state = s;
            out.push(Action::SetState(s));
        }
    }

    fn release(&mut self, out: &mut Vec<Action>) {
        if self.holds {
            self.holds = false;
            out.push(Action::Disconnect);
        }
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        self.release(out);
        self.set(State::Closed, out);
        self.gone = true;
        out.push(Action::Unregister);
    }

    /// The driver probed the device: its features are written; it waits
    /// for the frontend (`InitWait`).
    pub fn probe(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.gone {
            self.set(State::InitWait, &mut out);
        }
        out
    }

    /// The last `Connect` failed: the device goes to `Closing`.
    pub fn failed(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        self.holds = false;
        if !self.gone {
            self.set(State::Closing, &mut out);
        }
        out
    }

    /// The actions for `ev`.
    pub fn on(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.gone {
            return out;
        }
        match ev {
            Event::Peer(s) => {
                self.peer = s;
                // The old backend's frontend state: not ours to act on.
                if self.stale && s == State::Connected {
                    return out;
                }
                self.stale = false;
                match s {
                    // The frontend starts over after we closed: reconnect.
                    State::Initialising => {
                        if self.state == State::Closed && self.online {
                            self.set(State::InitWait, &mut out);
                        }
                    }
                    State::Initialised | State::Connected => {
                        if self.state != State::Connected && self.online {
                            // Idempotent, as xen_blkif_disconnect: never
                            // connect twice.
                            self.release(&mut out);
                            self.holds = true;
                            out.push(Action::Connect);
                            self.set(State::Connected, &mut out);
                        }
                    }
                    State::Closing => self.set(State::Closing, &mut out),
                    State::Closed => {
                        self.release(&mut out);
                        if self.online {
                            self.set(State::Closed, &mut out);
                        } else {
                            self.finish(&mut out);
                        }
                    }
                    State::Unknown => self.finish(&mut out),
                    State::InitWait | State::Reconfiguring | State::Reconfigured => {}
                }
            }
            Event::PeerGone => self.finish(&mut out),
            Event::Remove => {
                self.online = false;
                // The toolstack wrote `Closing` for us, but a write of ours
                // that read the node before it may have gone over it: say
                // it again.
                self.state = State::Closing;
                out.push(Action::SetState(State::Closing));
                // A frontend that is not there or already closed will not
                // answer: finish now.
                if matches!(self.peer, State::Closed | State::Unknown) {
                    self.finish(&mut out);
                }
            }
        }
        out
    }
}

/// The frontend end, as Linux's xen-blkfront `blkback_changed` runs it.
#[derive(Clone, Debug)]
pub struct Frontend {
    state: State,
    holds: bool,
    gone: bool,
}

impl Default for Frontend {
    fn default() -> Self {
        Frontend::new()
    }
}

impl Frontend {
    /// A frontend the toolstack has just made (`state` 1).
    pub fn new() -> Frontend {
        Frontend {
            state: State::Initialising,
            holds: false,
            gone: false,
        }
    }

    /// Our state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the rings and event channels are held.
    pub fn holds(&self) -> bool {
        self.holds
    }

    /// Whether the device is unregistered.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    fn set(&mut self, s: State, out: &mut Vec<Action>) {
        if self.state != s {
            self.state = s;
            out.push(Action::SetState(s));
        }
    }

    fn release(&mut self, out: &mut Vec<Action>) {
        if self.holds {
            self.holds = false;
            out.push(Action::Disconnect);
        }
    }

    /// The last `Setup` or `Connect` failed: the device goes to `Closing`.
    pub fn failed(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.gone {
            self.release(&mut out);
            self.set(State::Closing, &mut out);
        }
        out
    }

    /// The actions for `ev`.
    pub fn on(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.gone {
            return out;
        }
        match ev {
            Event::Peer(s) => match s {
                // The backend waits for us: publish the rings (again, after
                // a close: reconnection).
                // The backend waits for us: publish the rings (again, after
                // a close, or when a backend that had us connected started
                // over: its old mapping of our rings is gone).
                State::InitWait => {
                    if matches!(
                        self.state,
                        State::Initialising | State::Closed | State::Connected
                    ) {
                        self.release(&mut out);
                        self.holds = true;
                        out.push(Action::Setup);
                        self.set(State::Initialised, &mut out);
                    }
                }
                State::Connected => {
                    if self.state == State::Initialised {
                        out.push(Action::Connect);
                        self.set(State::Connected, &mut out);
                    }
                }
                // The backend closes (or has closed, and we missed its
                // Closing): so do we.
                State::Closing | State::Closed => {
                    self.release(&mut out);
                    self.set(State::Closed, &mut out);
                }
                State::Unknown => self.gone_now(&mut out),
                State::Initialising
                | State::Initialised
                | State::Reconfiguring
                | State::Reconfigured => {}
            },
            Event::PeerGone | Event::Remove => self.gone_now(&mut out),
        }
        out
    }

    fn gone_now(&mut self, out: &mut Vec<Action>) {
        self.release(out);
        self.set(State::Closed, out);
        self.gone = true;
        out.push(Action::Unregister);
    }
}
