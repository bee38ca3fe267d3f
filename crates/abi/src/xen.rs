//! Constants of `xen/xen.h`, `xen/sched.h` and `xen/event_channel.h`:
//! reserved domain ids, virtual IRQs, shutdown reasons and event-channel
//! limits.

crate::xen_consts! {
    /// Log2 of the page size of every ring protocol and hypercall interface.
    XEN_PAGE_SHIFT: u32 = 12;
    /// First of the domain ids that name no real domain.
    DOMID_FIRST_RESERVED: u16 = 0x7FF0;
    /// The calling domain.
    DOMID_SELF: u16 = 0x7FF0;
    /// I/O memory, as owner.
    DOMID_IO: u16 = 0x7FF1;
    /// Xen itself, as owner.
    DOMID_XEN: u16 = 0x7FF2;
    /// Copy-on-write pages, as owner.
    DOMID_COW: u16 = 0x7FF3;
    /// No domain.
    DOMID_INVALID: u16 = 0x7FF4;
    /// The idle domain.
    DOMID_IDLE: u16 = 0x7FFF;
    /// Mask of a domain id.
    DOMID_MASK: u16 = 0x7FFF;
    /// Timebase update or timeout (per vCPU).
    VIRQ_TIMER: u32 = 0;
    /// Request to dump debug information.
    VIRQ_DEBUG: u32 = 1;
    /// Bytes received on the emergency console (dom0).
    VIRQ_CONSOLE: u32 = 2;
    /// An exceptional event for some domain, such as its death (dom0).
    VIRQ_DOM_EXC: u32 = 3;
    /// Trace buffer records available (dom0).
    VIRQ_TBUF: u32 = 4;
    /// A domain paused for debugging (dom0).
    VIRQ_DEBUGGER: u32 = 6;
    /// Bytes received on the console ring (dom0).
    VIRQ_CON_RING: u32 = 8;
    /// A physical CPU changed state (dom0).
    VIRQ_PCPU_STATE: u32 = 9;
    /// Xen is low on heap memory (dom0).
    VIRQ_ENOMEM: u32 = 12;
    /// Number of virtual IRQs.
    NR_VIRQS: u32 = 24;
    /// Ports of the 2-level event-channel ABI on a 64-bit guest.
    EVTCHN_2L_NR_CHANNELS: u32 = 4096, c "(int)EVTCHN_2L_NR_CHANNELS";
    /// `SCHEDOP_shutdown` reason: the guest powered off.
    SHUTDOWN_POWEROFF: u8 = 0, c "SHUTDOWN_poweroff";
    /// `SCHEDOP_shutdown` reason: the guest wants to be rebooted.
    SHUTDOWN_REBOOT: u8 = 1, c "SHUTDOWN_reboot";
    /// `SCHEDOP_shutdown` reason: the guest suspended (to be saved).
    SHUTDOWN_SUSPEND: u8 = 2, c "SHUTDOWN_suspend";
    /// `SCHEDOP_shutdown` reason: the guest crashed.
    SHUTDOWN_CRASH: u8 = 3, c "SHUTDOWN_crash";
    /// `SCHEDOP_shutdown` reason: the guest's watchdog fired.
    SHUTDOWN_WATCHDOG: u8 = 4, c "SHUTDOWN_watchdog";
    /// `SCHEDOP_shutdown` reason: the guest asks for a soft reset.
    SHUTDOWN_SOFT_RESET: u8 = 5, c "SHUTDOWN_soft_reset";
    /// `EVTCHNOP_bind_interdomain`.
    EVTCHNOP_BIND_INTERDOMAIN: u32 = 0, c "EVTCHNOP_bind_interdomain";
    /// `EVTCHNOP_bind_virq`.
    EVTCHNOP_BIND_VIRQ: u32 = 1, c "EVTCHNOP_bind_virq";
    /// `EVTCHNOP_bind_pirq`.
    EVTCHNOP_BIND_PIRQ: u32 = 2, c "EVTCHNOP_bind_pirq";
    /// `EVTCHNOP_close`.
    EVTCHNOP_CLOSE: u32 = 3, c "EVTCHNOP_close";
    /// `EVTCHNOP_send`.
    EVTCHNOP_SEND: u32 = 4, c "EVTCHNOP_send";
    /// `EVTCHNOP_status`.
    EVTCHNOP_STATUS: u32 = 5, c "EVTCHNOP_status";
    /// `EVTCHNOP_alloc_unbound`.
    EVTCHNOP_ALLOC_UNBOUND: u32 = 6, c "EVTCHNOP_alloc_unbound";
}
