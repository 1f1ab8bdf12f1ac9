//! Exit codes a shell script can branch on: the command's own, `sysexits.h`'s for what went wrong
//! before it ran, and [`LEASE_LOST`] for a lease lost while it ran.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// `EX_USAGE`: bad arguments (clap's own errors included); nothing was sent.
pub const USAGE: u8 = 64;
/// `EX_UNAVAILABLE`: the lock server could not be reached, or refused; nothing ran.
pub const UNAVAILABLE: u8 = 69;
/// `EX_OSERR`: no thread, no signal handler, or `wait` failed.
pub const OS_ERROR: u8 = 71;
/// `EX_TEMPFAIL`: the lock is held elsewhere and was not acquired in time; nothing ran.
pub const TEMP_FAIL: u8 = 75;
/// The lease was lost while the command ran, and the command was stopped. Outside
/// `sysexits.h` (64–78) and below the shell's 126–128+N.
pub const LEASE_LOST: u8 = 80;
/// The command was found but could not be run (a shell's code for it).
pub const CANNOT_EXECUTE: u8 = 126;
/// The command was not found (a shell's code for it).
pub const NOT_FOUND: u8 = 127;

/// Why `fencelock` stopped before (or instead of) passing on a command's status: one line for
/// stderr, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Prints `fencelock: MESSAGE` on stderr and returns the exit code.
    pub fn report(self) -> u8 {
        eprintln!("fencelock: {}", self.message);
        self.code
    }
}

/// The exit code a shell would give for a command that ended with `status`: its code, or
/// `128 + N` for signal `N`.
pub fn of_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        // On unix an exit code is the low 8 bits of the status: it always fits.
        (Some(code), _) => u8::try_from(code).unwrap_or(u8::MAX),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(u8::MAX),
        // Neither exited nor killed (stopped, continued): `wait` does not return those.
        (None, None) => OS_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_in_a_shell() {
        // Raw wait statuses: exit code in bits 8..16, terminating signal in bits 0..7.
        assert_eq!(of_status(ExitStatus::from_raw(0)), 0);
        assert_eq!(of_status(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(of_status(ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(of_status(ExitStatus::from_raw(15)), 143); // SIGTERM
        assert_eq!(of_status(ExitStatus::from_raw(9)), 137); // SIGKILL
    }

    #[test]
    fn our_codes_are_distinct() {
        let ours = [
            USAGE,
            UNAVAILABLE,
            OS_ERROR,
            TEMP_FAIL,
            LEASE_LOST,
            CANNOT_EXECUTE,
            NOT_FOUND,
        ];
        for (i, a) in ours.iter().enumerate() {
            assert!(ours[i + 1..].iter().all(|b| a != b));
        }
    }
}
