//! The command: spawned in a process group of its own and told its token; stopped as a group.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use fencelock::FencingToken;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Starts `command` (program and arguments) with `FENCELOCK_TOKEN` and `FENCELOCK_NAME` set, in a
/// new process group whose id is the child's pid; stdin, stdout and stderr are ours.
///
/// On Linux the child is also sent `SIGKILL` if `fencelock` dies first (`kill -9`, the OOM
/// killer): nobody would stop it when the lease runs out. That reaches the command itself only,
/// not processes it started. The parent-death signal follows the *thread* that spawned the child,
/// so call this from the main thread, which lives as long as the process.
///
/// # Errors
/// As [`Command::spawn`]: the program was not found, is not executable, ...
pub fn spawn(command: &[OsString], name: &str, token: FencingToken) -> io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("FENCELOCK_TOKEN", token.get().to_string())
        .env("FENCELOCK_NAME", name)
        .process_group(0);
    #[cfg(target_os = "linux")]
    die_with_parent(&mut cmd);
    cmd.spawn()
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    let in_child = move || {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        // The parent may have died before the signal was armed: then nobody would send it.
        if nix::unistd::getppid() != parent {
            return Err(Errno::ESRCH.into());
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure only makes two system calls (`prctl`,
    // `getppid`), both async-signal-safe, and allocates nothing: its errors are raw errnos.
    unsafe {
        cmd.pre_exec(in_child);
    }
}

/// Sends `signal` to the process group `group` (the child's pid), ignoring a group that has no
/// process left (`ESRCH`).
///
/// Called only until the group's leader has been seen to exit, or right after (to stop what it
/// left running): a group id cannot be reused while any process is in the group.
pub fn signal_group(group: u32, signal: Signal) -> io::Result<()> {
    let pid = i32::try_from(group).map_err(io::Error::other)?;
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
