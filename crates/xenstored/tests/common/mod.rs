//! What more than one test binary needs.

/// CPU time of the calling thread.
pub(crate) fn thread_cpu() -> std::time::Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is valid for the kernel to fill.
    #[allow(unsafe_code)]
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0);
    std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}
