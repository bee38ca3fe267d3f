//! The xenbus state machines against every order of events: no sequence of
//! peer states and removals makes an end hold resources twice, leak them,
//! act after it is gone, or hang.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use xenbus::machine::{Action, Backend, Event, Frontend};
use xenbus::State;

/// Checks one end's actions against what it held: a `Setup`/`Connect`
/// that takes resources only when none are held, a `Disconnect` only when
/// some are, nothing after `Unregister`, and nothing held at it.
#[derive(Default)]
struct Ledger {
    holds: bool,
    gone: bool,
}

impl Ledger {
    fn take(&mut self, actions: &[Action], takes: &[Action]) {
        for a in actions {
            assert!(!self.gone, "{a:?} after Unregister");
            match a {
                Action::Disconnect => {
                    assert!(self.holds, "Disconnect with nothing held");
                    self.holds = false;
                }
                Action::Unregister => {
                    assert!(!self.holds, "Unregister while holding resources");
                    self.gone = true;
                }
                a if takes.contains(a) => {
                    assert!(!self.holds, "{a:?} while already holding");
                    self.holds = true;
                }
                _ => {}
            }
        }
    }
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (0usize..9).prop_map(|i| Event::Peer(State::ALL[i])),
        1 => Just(Event::PeerGone),
        1 => Just(Event::Remove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn a_backend_never_leaks_or_doubles(events in prop::collection::vec(event(), 0..40)) {
        let mut b = Backend::new();
        let mut l = Ledger::default();
        l.take(&b.probe(), &[Action::Connect]);
        for (i, ev) in events.iter().enumerate() {
            let acts = b.on(*ev);
            l.take(&acts, &[Action::Connect]);
            // A failure now and then.
            if i % 7 == 3 && acts.contains(&Action::Connect) {
                l.holds = false;
                l.take(&b.failed(), &[Action::Connect]);
            }
            prop_assert_eq!(b.holds(), l.holds);
            prop_assert_eq!(b.is_gone(), l.gone);
        }
        // Its peer vanishing always ends it, with nothing held.
        l.take(&b.on(Event::PeerGone), &[Action::Connect]);
        prop_assert!(l.gone && !l.holds);
    }

    #[test]
    fn a_frontend_never_leaks_or_doubles(events in prop::collection::vec(event(), 0..40)) {
        let mut f = Frontend::new();
        let mut l = Ledger::default();
        for (i, ev) in events.iter().enumerate() {
            let acts = f.on(*ev);
            l.take(&acts, &[Action::Setup]);
            if i % 5 == 2 && acts.contains(&Action::Setup) {
                l.take(&f.failed(), &[Action::Setup]);
            }
            prop_assert_eq!(f.holds(), l.holds);
        }
        l.take(&f.on(Event::PeerGone), &[Action::Setup]);
        prop_assert!(l.gone && !l.holds);
    }

    /// The two ends wired through "watches": each delivery reads the other
    /// end's current state, so intermediate states may be skipped, in any
    /// order the scheduler picks. They always connect, and a removal
    /// always ends with both closed and nothing held.
    #[test]
    fn two_ends_connect_and_part_in_any_order(
        picks in prop::collection::vec(any::<bool>(), 0..64),
        remove_at in 0usize..64,
    ) {
        let mut b = Backend::new();
        let mut f = Frontend::new();
        let (mut lb, mut lf) = (Ledger::default(), Ledger::default());
        lb.take(&b.probe(), &[Action::Connect]);
        // Pending watch firings: the frontend's on the backend's state and
        // the other way round.
        let (mut to_f, mut to_b) = (true, true);
        let mut removed = false;
        let mut step = 0usize;
        let mut picks = picks.into_iter();
        while to_f || to_b {
            step += 1;
            prop_assert!(step < 1000, "no quiescence");
            if step == remove_at && !removed {
                removed = true;
                lb.take(&b.on(Event::Remove), &[Action::Connect]);
                // The toolstack wrote the backend's state.
                to_f = true;
            }
            let deliver_f = match (to_f, to_b) {
                (true, true) => picks.next().unwrap_or(true),
                (f_pending, _) => f_pending,
            };
            if deliver_f {
                to_f = false;
                let acts = f.on(Event::Peer(b.state()));
                lf.take(&acts, &[Action::Setup]);
                to_b |= acts.iter().any(|a| matches!(a, Action::SetState(_)));
            } else {
                to_b = false;
                let acts = b.on(Event::Peer(f.state()));
                lb.take(&acts, &[Action::Connect]);
                to_f |= acts.iter().any(|a| matches!(a, Action::SetState(_)));
            }
        }
        if removed {
            prop_assert!(b.is_gone() && !b.holds(), "backend {:?}", b.state());
            prop_assert_eq!(f.state(), State::Closed);
            prop_assert!(!f.holds());
        } else {
            prop_assert_eq!((b.state(), f.state()), (State::Connected, State::Connected));
            prop_assert!(b.holds() && f.holds());
            // Then removed: both part.
            lb.take(&b.on(Event::Remove), &[Action::Connect]);
            let acts = f.on(Event::Peer(b.state()));
            lf.take(&acts, &[Action::Setup]);
            lb.take(&b.on(Event::Peer(f.state())), &[Action::Connect]);
            prop_assert!(b.is_gone() && !b.holds());
            prop_assert!(!f.holds());
        }
    }
}

#[test]
fn a_backend_reconnects_after_closed() {
    let mut b = Backend::new();
    b.probe();
    assert_eq!(
        b.on(Event::Peer(State::Initialised)),
        [Action::Connect, Action::SetState(State::Connected)]
    );
    assert_eq!(
        b.on(Event::Peer(State::Closing)),
        [Action::SetState(State::Closing)]
    );
    assert_eq!(
        b.on(Event::Peer(State::Closed)),
        [Action::Disconnect, Action::SetState(State::Closed)]
    );
    assert_eq!(
        b.on(Event::Peer(State::Initialising)),
        [Action::SetState(State::InitWait)]
    );
    assert_eq!(
        b.on(Event::Peer(State::Initialised)),
        [Action::Connect, Action::SetState(State::Connected)]
    );
}

#[test]
fn a_backend_taking_over_waits_for_the_frontend_to_publish_again() {
    let mut b = Backend::taking_over();
    assert_eq!(b.probe(), [Action::SetState(State::InitWait)]);
    // The frontend still says Connected: that was the old backend's ring.
    assert_eq!(b.on(Event::Peer(State::Connected)), []);
    assert!(!b.holds());
    // It publishes again.
    assert_eq!(
        b.on(Event::Peer(State::Initialised)),
        [Action::Connect, Action::SetState(State::Connected)]
    );
    // The frontend's end: Connected, then the backend starts over.
    let mut f = Frontend::new();
    f.on(Event::Peer(State::InitWait));
    f.on(Event::Peer(State::Connected));
    assert_eq!(f.state(), State::Connected);
    assert_eq!(
        f.on(Event::Peer(State::InitWait)),
        [
            Action::Disconnect,
            Action::Setup,
            Action::SetState(State::Initialised)
        ]
    );
    assert!(f.holds());
}
