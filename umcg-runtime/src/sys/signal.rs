//! Signals: install a handler, block and unblock in the calling thread, send to a pthread.
//!
//! The emulator relies on signals for one thing: a handler that runs while a thread sleeps
//! in a futex wait or an epoll wait must end that wait with `EINTR`, so that `umcg_wait`
//! can report it. Handlers are therefore installed **without `SA_RESTART`**, with
//! `SA_SIGINFO` (the handler receives the `siginfo_t`, e.g. the sender's pid in `si_pid`),
//! and with an empty `sa_mask`.
//!
//! Dispositions are process-wide; masks are per thread (a new thread inherits its creator's
//! mask). To direct a signal at a kernel tid use [`super::thread::tgkill`].

use nix::errno::Errno;
pub use nix::sys::pthread::{Pthread, pthread_self};
use nix::sys::signal::{SaFlags, SigHandler, SigSet, SigmaskHow, pthread_sigmask};
pub use nix::sys::signal::{SigAction, Signal};

/// A handler with the `SA_SIGINFO` signature: signal number, `siginfo_t`, `ucontext_t`.
pub type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Install `handler` for `sig`, process-wide, with `SA_SIGINFO`, without `SA_RESTART` and
/// with an empty `sa_mask`; returns the previous action (for [`restore_action`]).
/// `sigaction(2)`.
///
/// `EINVAL` for `SIGKILL` and `SIGSTOP`.
///
/// # Safety
///
/// - `handler` must do only async-signal-safe work (man 7 signal-safety): no allocation, no
///   locks, no `println!`; it may run on any thread of the process that does not block
///   `sig`, at any instruction.
/// - It replaces whatever handler other code of the process (a runtime, a library, the test
///   harness) installed for `sig`; the caller must know that nobody else relies on it.
pub unsafe fn install_handler(sig: Signal, handler: SigInfoHandler) -> Result<SigAction, Errno> {
    let action = SigAction::new(
        SigHandler::SigAction(handler),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the caller guarantees that `handler` is async-signal-safe and that replacing
    // the disposition of `sig` is allowed (this fn's `# Safety`).
    unsafe { nix::sys::signal::sigaction(sig, &action) }
}

/// Install `handler` for `sig` like [`install_handler`] but **with `SA_RESTART`**: system
/// calls it interrupts are restarted where the kernel can (read, write, untimed futex
/// waits...), instead of failing with `EINTR`. For the preemption signal, which must disturb
/// the code it interrupts as little as possible. `sigaction(2)`, signal(7) "Interruption of
/// system calls and library functions by signal handlers".
///
/// # Safety
///
/// As for [`install_handler`].
pub unsafe fn install_restarting_handler(
    sig: Signal,
    handler: SigInfoHandler,
) -> Result<SigAction, Errno> {
    let action = SigAction::new(
        SigHandler::SigAction(handler),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: as in `install_handler`, per this fn's `# Safety`.
    unsafe { nix::sys::signal::sigaction(sig, &action) }
}

/// The calling thread's `errno`, and a way to put it back: a signal handler that makes
/// system calls must preserve the interrupted code's `errno` (signal-safety(7)).
pub fn errno() -> i32 {
    Errno::last_raw()
}

/// Set the calling thread's `errno` (see [`errno`]).
pub fn set_errno(value: i32) {
    Errno::set_raw(value);
}

/// Put back an action returned by [`install_handler`]; returns the one it replaces.
/// `sigaction(2)`.
///
/// # Safety
///
/// - If `action` names a handler, that handler must still be async-signal-safe and valid to
///   call (it was when it was installed; its code must not have been unloaded).
/// - As for [`install_handler`]: nobody else may rely on the disposition being replaced.
pub unsafe fn restore_action(sig: Signal, action: &SigAction) -> Result<SigAction, Errno> {
    // SAFETY: the caller guarantees that `action`'s handler (if any) is still valid and
    // async-signal-safe, and that replacing the disposition is allowed.
    unsafe { nix::sys::signal::sigaction(sig, action) }
}

/// Block `sig` in the calling thread: it stays pending until unblocked (or goes to another
/// thread that does not block it, if process-directed). `pthread_sigmask(SIG_BLOCK)`;
/// man pthread_sigmask(3).
pub fn block(sig: Signal) -> Result<(), Errno> {
    let mut set = SigSet::empty();
    set.add(sig);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

/// Unblock `sig` in the calling thread; if it is pending, its handler runs before this
/// returns. `pthread_sigmask(SIG_UNBLOCK)`; man pthread_sigmask(3).
pub fn unblock(sig: Signal) -> Result<(), Errno> {
    let mut set = SigSet::empty();
    set.add(sig);
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)
}

/// Send `sig` to the thread `thread` of this process. `pthread_kill(3)`.
///
/// Returns `ESRCH` if the thread has terminated but has not been joined (glibc 2.34+).
///
/// # Safety
///
/// - `thread` must identify a thread of this process that has not been joined, and not been
///   detached and then exited: glibc's `pthread_t` points into the thread's descriptor, which
///   may be freed after that, and POSIX leaves the call undefined.
pub unsafe fn pthread_kill(thread: Pthread, sig: Signal) -> Result<(), Errno> {
    nix::sys::pthread::pthread_kill(thread, sig)
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread;

    static DELIVERED: AtomicU32 = AtomicU32::new(0);

    extern "C" fn count_sigusr1(
        sig: libc::c_int,
        info: *mut libc::siginfo_t,
        _: *mut libc::c_void,
    ) {
        // Only atomics: async-signal-safe (no panic machinery in a handler).
        if sig == libc::SIGUSR1 && !info.is_null() {
            DELIVERED.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A blocked signal stays pending (handler not run); unblocking runs it before
    /// `pthread_sigmask` returns (POSIX). Deterministic because the signal is thread-directed.
    #[test]
    fn blocked_signal_delivered_on_unblock() {
        // SAFETY: the handler only touches an atomic; SIGUSR1 is used by no other code in
        // this test binary.
        let old = unsafe { install_handler(Signal::SIGUSR1, count_sigusr1) }.unwrap();
        thread::spawn(|| {
            block(Signal::SIGUSR1).unwrap();
            // SAFETY: the calling thread is alive and not joined.
            unsafe { pthread_kill(pthread_self(), Signal::SIGUSR1) }.unwrap();
            assert_eq!(DELIVERED.load(Ordering::Relaxed), 0);
            unblock(Signal::SIGUSR1).unwrap();
            assert_eq!(DELIVERED.load(Ordering::Relaxed), 1);
        })
        .join()
        .unwrap();
        // SAFETY: restores the disposition the test binary had (default, no handler).
        let ours = unsafe { restore_action(Signal::SIGUSR1, &old) }.unwrap();
        assert!(matches!(ours.handler(), SigHandler::SigAction(_)));
        assert!(ours.flags().contains(SaFlags::SA_SIGINFO));
        assert!(!ours.flags().contains(SaFlags::SA_RESTART));
    }

    #[test]
    fn cannot_catch_sigkill() {
        // SAFETY: fails before installing anything (SIGKILL cannot be caught).
        let r = unsafe { install_handler(Signal::SIGKILL, count_sigusr1) };
        assert_eq!(r.err(), Some(Errno::EINVAL));
    }
}
