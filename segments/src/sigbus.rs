//! Faults in mapped segments become a message naming the file and byte offset, not a silent death.
//!
//! Reading a mapped page whose backing bytes are gone (the file was truncated under the reader by another
//! process, or the disk cannot read the sector) raises `SIGBUS`. By default that kills the process with no
//! word of which file. Every [`Segment`](crate::Segment) registers its mapping here when it is mapped and
//! unregisters it before it is unmapped; the first registration installs, once per process, a `SIGBUS`
//! handler (`sigaction` with `SA_SIGINFO`) that looks the fault address (`si_addr`) up among the registered
//! mappings. For an address inside a segment it writes
//!
//! ```text
//! catchup: segment FILE unreadable at byte OFFSET (truncated under the reader or a media error)
//! ```
//!
//! to standard error with `write(2)` and ends the process with `_exit(`[`SIGBUS_EXIT_CODE`]`)` (74, `EX_IOERR`
//! of `sysexits.h`). A fault anywhere else is passed to the handler that was installed before (Rust's own
//! stack-overflow handler, or the default action, which kills the process with `SIGBUS` as before).
//!
//! The handler is async-signal-safe: the registry is a fixed array of slots made of atomics (no lock, no
//! allocation), the message is assembled in a buffer on the handler's stack, and the only calls are
//! `write`, `_exit`, `sigaction` and `raise`.
//!
//! Limits: [`REGISTRY_SLOTS`] mappings at once (a segment mapped beyond that still works; a fault in it is
//! not named), and the last [`PATH_BYTES_MAX`] bytes of each path.

use std::path::Path;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

/// Exit status of a process whose read of a mapped segment faulted (`EX_IOERR`).
pub const SIGBUS_EXIT_CODE: i32 = 74;
/// Most segment mappings named at once.
pub const REGISTRY_SLOTS: usize = 4096;
/// Bytes of a path kept per mapping (the end of longer paths, after "...").
pub const PATH_BYTES_MAX: usize = 256;
const PATH_WORDS: usize = PATH_BYTES_MAX / 8;
const _: () = assert!(PATH_WORDS * 8 == PATH_BYTES_MAX);

// Slot states: the low two bits, plus a generation count above them that grows at each registration, so
// the handler notices a slot that was released and reused while it read it.
const TAG_MASK: u64 = 3;
const TAG_FREE: u64 = 0;
const TAG_BUSY: u64 = 1;
const TAG_READY: u64 = 2;

struct Slot {
    /// Tag and generation. The `Release` store of `TAG_READY` (in [`register`]) publishes `start`, `len` and
    /// the path; the handler's `Acquire` load pairs with it.
    state: AtomicU64,
    start: AtomicUsize,
    len: AtomicUsize,
    path_len: AtomicUsize,
    path: [AtomicU64; PATH_WORDS],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU64::new(TAG_FREE),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            path_len: AtomicUsize::new(0),
            path: [const { AtomicU64::new(0) }; PATH_WORDS],
        }
    }
}

static REGISTRY: [Slot; REGISTRY_SLOTS] = [const { Slot::new() }; REGISTRY_SLOTS];
static INSTALL: Once = Once::new();

/// The action that was installed before ours, written once (inside `INSTALL`, before our handler can run)
/// and only read afterwards.
struct PreviousAction(std::cell::UnsafeCell<std::mem::MaybeUninit<libc::sigaction>>);
// SAFETY: written once inside `INSTALL.call_once`, before `sigaction` installs the handler that reads it;
// never written again, so concurrent reads (the handler, on any thread) see a finished value.
unsafe impl Sync for PreviousAction {}
static PREVIOUS: PreviousAction = PreviousAction(std::cell::UnsafeCell::new(std::mem::MaybeUninit::zeroed()));

/// A mapping's place in the registry; dropping it removes the mapping (do that before unmapping).
#[derive(Debug)]
pub(crate) struct Registration(usize);

impl Drop for Registration {
    fn drop(&mut self) {
        let slot = &REGISTRY[self.0];
        let s = slot.state.load(Ordering::Relaxed);
        // Busy first, so the handler stops matching this range before the mapping goes away; the handler's
        // second load of `state` sees the change (or the mapping is still there when it reads).
        slot.state.store((s & !TAG_MASK) | TAG_BUSY, Ordering::SeqCst);
        // Orders the busy tag before the stores below (seqlock writer): pairs with the handler's `Acquire`
        // fence, so a handler that reads a cleared field also sees the tag change on its second load.
        fence(Ordering::Release);
        slot.start.store(0, Ordering::Relaxed);
        slot.len.store(0, Ordering::Relaxed);
        // Release pairs with the `Acquire` compare-exchange of a later [`register`] that reuses the slot.
        slot.state.store((s & !TAG_MASK) | TAG_FREE, Ordering::Release);
    }
}

/// Registers the mapping `[start, start + len)` of the file `path`, installing the handler on first use.
/// `None` when every slot is taken (the mapping is then not named on a fault).
pub(crate) fn register(start: *const u8, len: usize, path: &Path) -> Option<Registration> {
    INSTALL.call_once(install);
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut kept = [0u8; PATH_BYTES_MAX];
    let kept_len = if bytes.len() <= PATH_BYTES_MAX {
        kept[..bytes.len()].copy_from_slice(bytes);
        bytes.len()
    } else {
        kept[..3].copy_from_slice(b"...");
        kept[3..].copy_from_slice(&bytes[bytes.len() - (PATH_BYTES_MAX - 3)..]);
        PATH_BYTES_MAX
    };
    for (i, slot) in REGISTRY.iter().enumerate() {
        let s = slot.state.load(Ordering::Relaxed);
        if s & TAG_MASK != TAG_FREE {
            continue;
        }
        let generation = (s >> 2) + 1;
        // Acquire pairs with the `Release` store that freed the slot (in `Registration::drop`).
        if slot.state.compare_exchange(s, (generation << 2) | TAG_BUSY, Ordering::Acquire, Ordering::Relaxed).is_err() {
            continue;
        }
        // Orders the busy tag (new generation) before the field stores below (seqlock writer): pairs with the
        // handler's `Acquire` fence, so a handler that read a new field sees the new generation on its second
        // load of `state` and skips the slot.
        fence(Ordering::Release);
        slot.start.store(start as usize, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        slot.path_len.store(kept_len, Ordering::Relaxed);
        for (w, chunk) in slot.path.iter().zip(kept.chunks_exact(8)) {
            w.store(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        // Release publishes the fields above to the handler's `Acquire` load of `state`.
        slot.state.store((generation << 2) | TAG_READY, Ordering::Release);
        return Some(Registration(i));
    }
    None
}

fn install() {
    // SAFETY: `sigaction` with a zeroed, then filled, struct is the documented way to install a handler;
    // `PREVIOUS` is written here only, before the new handler is installed (see `PreviousAction`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let previous = (*PREVIOUS.0.get()).as_mut_ptr();
        if libc::sigaction(libc::SIGBUS, &action, previous) != 0 {
            // Not installed: faults keep their old behaviour. Nothing else depends on it.
            (*PREVIOUS.0.get()).write(std::mem::zeroed());
        }
    }
}

/// A fixed buffer for the message (no allocation in a signal handler).
struct Msg {
    buf: [u8; 512],
    len: usize,
}

impl Msg {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_decimal(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler. `si_addr` is the faulting
    // address when the kernel raised the signal for a fault (`si_code > 0`); a SIGBUS sent with `kill`
    // (`si_code <= 0`) has none, and goes to the previous handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    for slot in REGISTRY.iter().filter(|_| code > 0) {
        // Acquire pairs with the `Release` store of `TAG_READY` in `register`.
        let s = slot.state.load(Ordering::Acquire);
        if s & TAG_MASK != TAG_READY {
            continue;
        }
        let (start, len) = (slot.start.load(Ordering::Relaxed), slot.len.load(Ordering::Relaxed));
        if addr < start || addr - start >= len {
            continue;
        }
        let mut path = [0u8; PATH_BYTES_MAX];
        for (chunk, w) in path.chunks_exact_mut(8).zip(slot.path.iter()) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        let path_len = slot.path_len.load(Ordering::Relaxed).min(PATH_BYTES_MAX);
        // The slot must not have been released (or reused) while we read it. This fence pairs with the
        // `Release` fences after the busy tag in `register` and `Registration::drop` (seqlock reader).
        fence(Ordering::Acquire);
        if slot.state.load(Ordering::Relaxed) != s {
            continue;
        }
        let mut msg = Msg { buf: [0; 512], len: 0 };
        msg.push(b"catchup: segment ");
        msg.push(&path[..path_len]);
        msg.push(b" unreadable at byte ");
        msg.push_decimal((addr - start) as u64);
        msg.push(b" (truncated under the reader or a media error)\n");
        // SAFETY: `write` and `_exit` are async-signal-safe; the buffer lives on this stack frame.
        unsafe {
            libc::write(2, msg.buf.as_ptr().cast(), msg.len);
            libc::_exit(SIGBUS_EXIT_CODE);
        }
    }
    // Not a segment: hand the signal to whoever had it before.
    // SAFETY: `PREVIOUS` was written before this handler was installed and is never written again.
    let previous = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // SAFETY: `sigaction` and `raise` are async-signal-safe. With the default action back, the signal
        // raised here (blocked until this handler returns) or the faulting access, re-executed on return,
        // ends the process with SIGBUS as if no handler had been installed.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut dfl.sa_mask);
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
            libc::raise(libc::SIGBUS);
        }
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with `SA_SIGINFO`, so it has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, context);
    } else {
        // SAFETY: a handler installed without `SA_SIGINFO` takes only the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_reused_after_release() {
        let a = register(0x1000 as *const u8, 10, Path::new("a.seg")).unwrap();
        let i = a.0;
        assert_eq!(REGISTRY[i].state.load(Ordering::Relaxed) & TAG_MASK, TAG_READY);
        drop(a);
        assert_eq!(REGISTRY[i].state.load(Ordering::Relaxed) & TAG_MASK, TAG_FREE);
    }

    #[test]
    fn decimal() {
        let mut m = Msg { buf: [0; 512], len: 0 };
        m.push_decimal(0);
        m.push(b" ");
        m.push_decimal(18_446_744_073_709_551_615);
        assert_eq!(&m.buf[..m.len], b"0 18446744073709551615");
    }
}
