//! `enum xenbus_state` of `xen/io/xenbus.h`.

use std::fmt;

/// A device end's state, as written in its `state` node (a decimal number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// 0: no state (the node is missing or unreadable).
    Unknown,
    /// 1: the end is being set up.
    Initialising,
    /// 2: the backend waits for the frontend's details (the backend has
    /// published its features).
    InitWait,
    /// 3: the frontend has published its rings and event channels.
    Initialised,
    /// 4: both ends may exchange requests.
    Connected,
    /// 5: the end is shutting down.
    Closing,
    /// 6: the end is shut down.
    Closed,
    /// 7: a change of configuration is under way (netback's multi-queue).
    Reconfiguring,
    /// 8: the change of configuration is done.
    Reconfigured,
}

impl State {
    /// Every state, by number.
    pub const ALL: [State; 9] = [
        State::Unknown,
        State::Initialising,
        State::InitWait,
        State::Initialised,
        State::Connected,
        State::Closing,
        State::Closed,
        State::Reconfiguring,
        State::Reconfigured,
    ];

    /// Its number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The state a `state` node's value says; anything else is `Unknown`,
    /// as Linux's `xenbus_read_driver_state` reads it.
    pub fn parse(value: &[u8]) -> State {
        let text = std::str::from_utf8(value).unwrap_or("");
        text.trim()
            .parse::<usize>()
            .ok()
            .and_then(|n| State::ALL.get(n).copied())
            .unwrap_or(State::Unknown)
    }

    /// The value to write into a `state` node.
    pub fn value(self) -> Vec<u8> {
        self.number().to_string().into_bytes()
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Unknown => "Unknown",
            State::Initialising => "Initialising",
            State::InitWait => "InitWait",
            State::Initialised => "Initialised",
            State::Connected => "Connected",
            State::Closing => "Closing",
            State::Closed => "Closed",
            State::Reconfiguring => "Reconfiguring",
            State::Reconfigured => "Reconfigured",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_xenbus_h_numbers() {
        for (n, s) in State::ALL.iter().enumerate() {
            assert_eq!(s.number() as usize, n);
            assert_eq!(State::parse(&s.value()), *s);
        }
        assert_eq!(State::parse(b"4"), State::Connected);
        assert_eq!(State::parse(b"9"), State::Unknown);
        assert_eq!(State::parse(b"x"), State::Unknown);
        assert_eq!(State::parse(b""), State::Unknown);
    }
}
