//! Domains' connections: each introduced domain talks to the daemon over
//! one page of its memory (two byte rings, `docs/misc/xenstore-ring.txt`)
//! and one event channel.
//!
//! [`Core`](crate::server::Core) reaches the hypervisor only through
//! [`Hypervisor`]: mapping a page and binding a port at `XS_INTRODUCE`,
//! and telling which domains died when `VIRQ_DOM_EXC` fires.
//! [`PlatformHv`] is that over the `platform` traits (the sim, or Xen);
//! the fuzz target and tests use pages in our own memory.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use abi::{DomId, Pfn, Port, VolatileSlice};
use platform::{DomainControl, EventChannels, ForeignMemory, GrantMapping};
use xenstore::XsError;

/// `VIRQ_DOM_EXC` (`xen.h`): a domain died.
const VIRQ_DOM_EXC: u32 = abi::xen::VIRQ_DOM_EXC;

/// One domain's ring page and our end of its event channel. Dropping it
/// unmaps the page and closes the port.
pub trait DomainRing: Send {
    /// The page.
    fn memory(&self) -> VolatileSlice<'_>;
    /// Signals the domain.
    fn notify(&self);
    /// A descriptor that polls readable when the domain signalled us.
    fn fd(&self) -> RawFd;
    /// Clears the domain's signal.
    fn ack(&self);
}

/// What the daemon needs of the hypervisor.
pub trait Hypervisor: Send {
    /// Maps `domid`'s xenstore page (frame `gfn` of its memory) and binds
    /// our end of its unbound port `port`.
    fn connect(&mut self, domid: u16, gfn: u64, port: u32) -> Result<Box<dyn DomainRing>, XsError>;
    /// A descriptor that polls readable when a domain may have died.
    fn death_fd(&self) -> Option<RawFd>;
    /// Clears that signal; tells which of `domids` are dying or gone,
    /// and which shut down.
    fn exceptions(&mut self, domids: &[u16]) -> Exceptions;
    /// Whether `domid` exists and is not dying (the signal is left as is).
    fn exists(&mut self, domid: u16) -> bool;
    /// Whether `domid` shut down and is not dying yet (the signal is left
    /// as is).
    fn is_shut_down(&mut self, domid: u16) -> bool;
}

/// What became of the introduced domains when `VIRQ_DOM_EXC` fired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exceptions {
    /// Dying or gone: their connections end.
    pub dead: Vec<u16>,
    /// Shut down and not yet dying (`XEN_DOMINF_shutdown`): their
    /// connections stay until they die.
    pub shut_down: Vec<u16>,
}

/// [`Hypervisor`] over the paravirt layer, as dom0.
pub struct PlatformHv<P> {
    dom: P,
    virq: Port,
    virq_fd: OwnedFd,
}

impl<P> PlatformHv<P>
where
    P: ForeignMemory + EventChannels + DomainControl + Clone + Send + 'static,
    P::Mapping: Send,
{
    /// Binds `VIRQ_DOM_EXC` on `dom` (dom0).
    pub fn new(dom: P) -> platform::Result<PlatformHv<P>> {
        let virq = dom.bind_virq(VIRQ_DOM_EXC)?;
        let virq_fd = dom.pollable(virq)?;
        Ok(PlatformHv { dom, virq, virq_fd })
    }
}

impl<P: DomainControl> PlatformHv<P> {
    /// What the hypervisor tells of `domid`, if it exists and is not
    /// dying.
    fn living(&self, domid: u16) -> Option<platform::DomainInfo> {
        self.dom
            .list_domains()
            .ok()?
            .into_iter()
            .find(|i| i.domid == DomId(domid) && !i.dying)
    }
}

impl<P> Hypervisor for PlatformHv<P>
where
    P: ForeignMemory + EventChannels + DomainControl + Clone + Send + 'static,
    P::Mapping: Send,
{
    fn connect(&mut self, domid: u16, gfn: u64, port: u32) -> Result<Box<dyn DomainRing>, XsError> {
        // Xen's C xenstored maps the page by grant (the toolstack seeds
        // GNTTAB_RESERVED_XENSTORE); the sim has no toolstack-written grant
        // entries yet, so the page is mapped as a foreign frame, as
        // xenstored did before 4.x's grant mapping.
        let map = self
            .dom
            .map_foreign(DomId(domid), &[Pfn(gfn)])
            .map_err(|_| XsError::Inval)?;
        let local = self
            .dom
            .bind_interdomain(DomId(domid), Port(port))
            .map_err(|_| XsError::Inval)?;
        let fd = match self.dom.pollable(local) {
            Ok(fd) => fd,
            Err(_) => {
                let _ = self.dom.close(local);
                return Err(XsError::Inval);
            }
        };
        Ok(Box::new(PlatformRing {
            dom: self.dom.clone(),
            map,
            port: local,
            fd,
        }))
    }

    fn death_fd(&self) -> Option<RawFd> {
        Some(self.virq_fd.as_raw_fd())
    }

    fn exceptions(&mut self, domids: &[u16]) -> Exceptions {
        let _ = self.dom.ack(self.virq);
        let Ok(all) = self.dom.list_domains() else {
            return Exceptions::default();
        };
        let mut out = Exceptions::default();
        for &d in domids {
            match all.iter().find(|i| i.domid == DomId(d) && !i.dying) {
                None => out.dead.push(d),
                Some(i) if i.shutdown.is_some() => out.shut_down.push(d),
                Some(_) => {}
            }
        }
        out
    }

    fn exists(&mut self, domid: u16) -> bool {
        self.living(domid).is_some()
    }

    fn is_shut_down(&mut self, domid: u16) -> bool {
        self.living(domid).is_some_and(|i| i.shutdown.is_some())
    }
}

struct PlatformRing<P: EventChannels + ForeignMemory> {
    dom: P,
    map: P::Mapping,
    port: Port,
    fd: OwnedFd,
}

impl<P: EventChannels + ForeignMemory + Send> DomainRing for PlatformRing<P>
where
    P::Mapping: Send,
{
    fn memory(&self) -> VolatileSlice<'_> {
        self.map.memory()
    }

    fn notify(&self) {
        // A closed peer port is the domain's business; its death comes by
        // VIRQ_DOM_EXC.
        let _ = self.dom.notify(self.port);
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ack(&self) {
        let _ = self.dom.ack(self.port);
    }
}

impl<P: EventChannels + ForeignMemory> Drop for PlatformRing<P> {
    fn drop(&mut self) {
        let _ = self.dom.close(self.port);
    }
}
