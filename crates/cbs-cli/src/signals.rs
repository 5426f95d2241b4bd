//! SIGINT and SIGTERM during training: the first asks the trainer to stop after the current
//! step (it writes that step's checkpoint and says how to resume); a second ends the process at
//! once (exit status 130).

use std::sync::atomic::{AtomicBool, Ordering};

/// The flag the trainer polls after each step (`TrainOptions::stop`). A signal handler can
/// only reach process-wide state, so this one flag is static.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
    let msg = b"\nstopping after the current step (a checkpoint is written); \
                signal again to quit at once\n";
    // SAFETY: `write` is async-signal-safe; the buffer outlives the call.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Installs the handlers and returns the flag they set.
pub fn stop_after_step() -> &'static AtomicBool {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: installing a handler that touches only an atomic and async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    &STOP
}
