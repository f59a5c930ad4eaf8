//! Ctrl-C for training commands: the first SIGINT asks the training loop to write a checkpoint
//! and stop at the next optimizer step (exit status 130); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};

static SEEN: AtomicBool = AtomicBool::new(false);

/// Installs the SIGINT handler (training commands only; the server has its own shutdown).
pub fn install() {
    let action = || {
        if SEEN.swap(true, Ordering::SeqCst) {
            // SAFETY: `_exit` is async-signal-safe.
            unsafe { libc::_exit(130) };
        }
        prefine_train::checkpoint::request_stop();
    };
    // SAFETY: the action only touches atomics and calls `_exit`, both async-signal-safe.
    if let Err(e) = unsafe { signal_hook_registry::register(libc::SIGINT, action) } {
        tracing::warn!("cannot install the Ctrl-C handler: {e}");
    }
}

/// The exit status of a failed command: 130 when it stopped on Ctrl-C, else 1.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    let train = e.downcast_ref::<prefine_train::Error>().or_else(|| {
        match e.downcast_ref::<prefine_suite::Error>() {
            Some(prefine_suite::Error::Train(t)) => Some(t),
            _ => None,
        }
    });
    match train {
        Some(prefine_train::Error::Interrupted { .. }) => 130,
        _ => 1,
    }
}
