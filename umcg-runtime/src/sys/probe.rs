//! Check that memory of our own address space is readable, without touching it.
//!
//! The real `sys_umcg_ctl` copies the `struct umcg_task` from user space with `get_user`,
//! which fails with `EFAULT` on an unmapped address. The emulator runs in user space: if it
//! dereferenced a bad `self` pointer it would crash the process with `SIGSEGV` instead.
//! [`probe_readable`] lets `umcg_ctl` return `EFAULT` like the kernel: it asks the kernel to
//! copy the range with `process_vm_readv(2)` *from our own pid*, and the kernel reports an
//! unreadable page as `EFAULT` rather than faulting us.
//!
//! Limits:
//! - A probe is a snapshot: another thread can `munmap` the range right after it succeeds.
//!   It turns programming errors into `EFAULT`, it does not make a racy caller safe.
//! - Only readability: `process_vm_writev` would *write*, and there is no way to test
//!   writability without writing. A read-only mapping passes.
//! - Readable means readable by the kernel on our behalf, honouring `PROT_*` (no
//!   `FOLL_FORCE`): `PROT_NONE` and unmapped pages fail. A range on a `userfaultfd`-registered
//!   mapping may block until the fault is resolved.
//! - A seccomp filter that forbids `process_vm_readv` makes every probe fail with its errno
//!   (`EPERM` or `ENOSYS`); ptrace access checks always pass for our own process.

use std::io::IoSliceMut;

use nix::errno::Errno;
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::getpid;

/// Readability is per page; 4 KiB is the smallest page on x86-64, so one byte per 4 KiB
/// block covers every page of a range whatever the mapping's page size.
const STRIDE: usize = 4096;

/// Remote iovecs per call (well below `IOV_MAX` = 1024).
const BATCH: usize = 64;

/// `Ok(())` if every byte of `[addr, addr + len)` is readable by this process; `EFAULT` if
/// some page is not mapped readable or the range wraps around the address space.
/// `process_vm_readv(getpid(), ...)`, one byte per 4 KiB block; man process_vm_readv(2).
/// An empty range is `Ok(())`. Other errnos (`EPERM`/`ENOSYS` under seccomp, `ENOMEM`)
/// mean the probe could not be made.
pub fn probe_readable(addr: usize, len: usize) -> Result<(), Errno> {
    if len == 0 {
        return Ok(());
    }
    let last = addr.checked_add(len - 1).ok_or(Errno::EFAULT)?;
    // The first byte, then the first byte of every later 4 KiB block up to `last`.
    let mut next = Some(addr);
    let pid = getpid();
    let mut remote = [RemoteIoVec { base: 0, len: 1 }; BATCH];
    let mut buf = [0u8; BATCH];
    while next.is_some() {
        let mut n = 0;
        while let Some(a) = next
            && n < BATCH
        {
            remote[n].base = a;
            n += 1;
            next = (a & !(STRIDE - 1))
                .checked_add(STRIDE)
                .filter(|&b| b <= last);
        }
        let mut local = [IoSliceMut::new(&mut buf[..n])];
        // The kernel stops at the first unreadable iovec: a short count names it. If it is
        // the first one, the call fails with EFAULT itself.
        let copied = process_vm_readv(pid, &mut local, &remote[..n])?;
        if copied != n {
            return Err(Errno::EFAULT);
        }
    }
    Ok(())
}

#[cfg(all(test, not(umcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn stack_and_heap_are_readable() {
        let x = 42u64;
        assert_eq!(
            probe_readable((&raw const x).addr(), size_of::<u64>()),
            Ok(())
        );
        let v = vec![0u8; 5 * STRIDE + 3];
        assert_eq!(probe_readable(v.as_ptr().addr(), v.len()), Ok(()));
        // Large enough for several batches.
        let big = vec![1u8; (BATCH * 3 + 1) * STRIDE];
        assert_eq!(probe_readable(big.as_ptr().addr(), big.len()), Ok(()));
        assert_eq!(probe_readable(0, 0), Ok(()));
    }

    #[test]
    fn low_address_and_wraparound_fault() {
        assert_eq!(probe_readable(0x10, 8), Err(Errno::EFAULT));
        assert_eq!(probe_readable(usize::MAX - 3, 8), Err(Errno::EFAULT));
    }

    /// Maps three pages, unmaps (or protects) the middle one: a range that starts readable
    /// and runs into it must fail too (the short-count path), not only one starting in it.
    #[test]
    fn munmapped_and_prot_none_pages_fault() {
        let page = STRIDE;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                3 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let mid = base.wrapping_byte_add(page);
        let last = base.wrapping_byte_add(2 * page);
        assert_eq!(probe_readable(base.addr(), 3 * page), Ok(()));

        // SAFETY: `mid` is the middle page of our own mapping; nothing references it.
        assert_eq!(unsafe { libc::mprotect(mid, page, libc::PROT_NONE) }, 0);
        assert_eq!(probe_readable(mid.addr(), 8), Err(Errno::EFAULT));
        assert_eq!(probe_readable(base.addr(), 2 * page), Err(Errno::EFAULT));

        // SAFETY: as above; after this the page is unmapped and only its address is used.
        assert_eq!(unsafe { libc::munmap(mid, page) }, 0);
        assert_eq!(probe_readable(mid.addr(), 8), Err(Errno::EFAULT));
        assert_eq!(probe_readable(mid.addr() - 4, 8), Err(Errno::EFAULT));
        assert_eq!(probe_readable(base.addr(), page), Ok(()));
        assert_eq!(probe_readable(last.addr(), page), Ok(()));

        // SAFETY: unmapping the two remaining pages of our own mapping, referenced by nothing.
        unsafe {
            assert_eq!(libc::munmap(base, page), 0);
            assert_eq!(libc::munmap(last, page), 0);
        }
    }
}
