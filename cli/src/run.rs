//! `fencelock run`: take the lock, run the command under a kept lease, stop it if the lease is
//! lost, release, exit as the command did.
//!
//! Three threads besides the lease's renewer: the main one spawns the command and supervises;
//! one blocks in `wait` for the command; one turns signals sent to `fencelock` into values. The
//! last two send on one channel, which the main thread waits on with a timeout of
//! [`LOSS_CHECK`], reading the lease's state (no I/O) between: it never sleeps to check again,
//! and acts on a loss within `LOSS_CHECK` of the lease reporting it.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use fencelock::{FencingToken, LeaseLost};
use fencelock_redis::{
    Error, KeepAlive, KeptLease, LockStatus, RedisLease, RedisLock, MAX_TTL, MIN_TTL,
};
use nix::sys::signal::Signal;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{debug, info};

use crate::child;
use crate::exit::{self, Failure};
use crate::target::Target;

/// The longest the main thread waits for an event before it reads the lease's state again.
const LOSS_CHECK: Duration = Duration::from_millis(50);
/// How long the command has to exit after `SIGKILL` before `fencelock` gives up waiting for it.
const AFTER_KILL: Duration = Duration::from_secs(5);
/// The signals passed on to the command's process group.
const PASSED_ON: [i32; 4] = [SIGHUP, SIGINT, SIGQUIT, SIGTERM];

/// What `fencelock run` was asked to do.
#[derive(Debug)]
pub struct Options {
    pub target: Target,
    pub ttl: Duration,
    /// Zero: one try (`--no-wait`).
    pub wait: Duration,
    pub max_hold: Option<Duration>,
    pub grace: Duration,
    pub name: String,
    /// The program and its arguments (never empty: clap requires one).
    pub command: Vec<OsString>,
}

/// Runs the command under the lock; the exit code, or why it did not run.
pub fn run(o: Options) -> Result<u8, Failure> {
    let kept = take_lock(&o)?;
    let (group, events) = match start_command(&o, kept.token()) {
        Ok(started) => started,
        Err(failure) => {
            let _ = kept.release();
            return Err(failure);
        }
    };
    let mut supervisor = Supervisor {
        o: &o,
        kept: &kept,
        group,
        started: Instant::now(),
        lost: None,
        kill_at: None,
        killed_at: None,
    };
    let end = supervisor.supervise(&events);
    let ended = Ended {
        end,
        lost: supervisor.lost,
        group,
    };
    finish(&o, kept, ended)
}

/// Checks the arguments, takes the lock and hands its lease to a renewer.
fn take_lock(o: &Options) -> Result<KeptLease, Failure> {
    // Everything that can be refused is checked before the first byte is sent.
    let server = o.target.open()?;
    let lock = server.lock(&o.name).map_err(|e| o.target.failure(e))?;
    if o.ttl < MIN_TTL || o.ttl > MAX_TTL {
        let message = format!(
            "--ttl {} is out of range: a lease lasts from {} to 2^40 ms (about 34 years)",
            human(o.ttl),
            human(MIN_TTL)
        );
        return Err(Failure::new(exit::USAGE, message));
    }
    // Fail fast (within the connect timeout) on a server that is not there: a waiting acquire
    // would retry connection errors until `--wait` is over.
    server.ping().map_err(|e| o.target.failure(e))?;
    let lease = acquire(&lock, o)?;
    info!(name = %o.name, token = %lease.token(), "lock acquired");
    let policy = o.max_hold.map_or(KeepAlive::default(), |total| {
        KeepAlive::default().max_hold(total)
    });
    let kept = lease.keep_alive(policy);
    if let Some(lost) = kept.lost() {
        // Acquired with too little validity left to be kept (a slow server): run nothing. (The
        // drop releases what may be left of it.)
        let message = format!(
            "the lock {} was lost before the command started ({lost}); nothing ran",
            o.name
        );
        return Err(Failure::new(exit::TEMP_FAIL, message));
    }
    Ok(kept)
}

/// Starts passing signals on, the command, and the thread that waits for it: the command's
/// process group, and where the events arrive.
fn start_command(o: &Options, token: FencingToken) -> Result<(u32, Receiver<Event>), Failure> {
    let (sender, events) = mpsc::channel();
    pass_signals_on(sender.clone())
        .map_err(|e| Failure::new(exit::OS_ERROR, format!("cannot handle signals: {e}")))?;
    let command =
        child::spawn(&o.command, &o.name, token).map_err(|e| cannot_run(&o.command[0], &e))?;
    let group = command.id();
    debug!(pid = group, "command started in its own process group");
    let waiter = thread::Builder::new()
        .name("fencelock-wait".into())
        .spawn(move || {
            let mut command = command;
            let _ = sender.send(Event::Exited(command.wait()));
        });
    if let Err(e) = waiter {
        let _ = child::signal_group(group, Signal::SIGKILL);
        return Err(Failure::new(
            exit::OS_ERROR,
            format!("cannot start a thread: {e}"),
        ));
    }
    Ok((group, events))
}

/// Takes the lock: in line for up to `o.wait`, or once.
fn acquire(lock: &RedisLock, o: &Options) -> Result<RedisLease, Failure> {
    let acquired = if o.wait.is_zero() {
        lock.try_acquire(o.ttl)
    } else {
        lock.acquire_timeout(o.ttl, o.wait)
    };
    match acquired {
        Ok(Some(lease)) => Ok(lease),
        Ok(None) => {
            let how = if o.wait.is_zero() {
                "not waiting (--no-wait)".to_owned()
            } else {
                format!("not acquired within --wait {}", human(o.wait))
            };
            let holder = holder(lock);
            let message = format!("the lock {} is held{holder}; {how}", o.name);
            Err(Failure::new(exit::TEMP_FAIL, message))
        }
        Err(Error::Lost(lost)) => {
            let message = format!(
                "the lock {} was granted too late to be used ({lost}); try a longer --ttl",
                o.name
            );
            Err(Failure::new(exit::TEMP_FAIL, message))
        }
        Err(e) => Err(o.target.failure(e)),
    }
}

/// ` by token N for D more`, best effort: one more round trip, its errors ignored.
fn holder(lock: &RedisLock) -> String {
    match lock.status() {
        Ok(Some(LockStatus {
            token: Some(token),
            remaining,
        })) => format!(" by token {token} for {} more", human(remaining)),
        _ => String::new(),
    }
}

/// What the main thread waits for.
#[derive(Debug)]
enum Event {
    /// The command exited (or `wait` failed).
    Exited(io::Result<ExitStatus>),
    /// `fencelock` was sent this signal.
    Signal(i32),
}

/// Turns the signals of [`PASSED_ON`] into [`Event::Signal`]s, from now until the process ends.
fn pass_signals_on(sender: Sender<Event>) -> io::Result<()> {
    let mut signals = Signals::new(PASSED_ON)?;
    thread::Builder::new()
        .name("fencelock-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if sender.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// How supervision ended.
#[derive(Debug)]
enum End {
    Exited(ExitStatus),
    WaitFailed(io::Error),
    /// Still there [`AFTER_KILL`] after `SIGKILL` (stuck in the kernel, say).
    Unkillable,
}

/// How supervision ended, with what `finish` needs of the supervisor.
struct Ended {
    end: End,
    /// A loss the supervisor acted on (and reported).
    lost: Option<LeaseLost>,
    group: u32,
}

struct Supervisor<'a> {
    o: &'a Options,
    kept: &'a KeptLease,
    /// The command's pid, which is its process group's id.
    group: u32,
    started: Instant,
    /// The loss, once acted on.
    lost: Option<LeaseLost>,
    /// When `SIGKILL` is due: set by the first `SIGTERM` (or signal passed on).
    kill_at: Option<Instant>,
    killed_at: Option<Instant>,
}

impl Supervisor<'_> {
    /// Waits for the command to exit, stopping it when the lease is lost or a signal comes.
    fn supervise(&mut self, events: &Receiver<Event>) -> End {
        loop {
            match events.recv_timeout(LOSS_CHECK) {
                Ok(Event::Exited(Ok(status))) => {
                    if self.kill_at.is_some() {
                        // Being stopped: what the command left running in its group goes too.
                        let _ = child::signal_group(self.group, Signal::SIGKILL);
                    }
                    return End::Exited(status);
                }
                Ok(Event::Exited(Err(e))) => return End::WaitFailed(e),
                Ok(Event::Signal(signal)) => self.pass_on(signal),
                Err(RecvTimeoutError::Timeout) => {}
                // The signal thread keeps its sender until the process ends.
                Err(RecvTimeoutError::Disconnected) => {
                    return End::WaitFailed(io::Error::other("the waiting thread ended"));
                }
            }
            let now = Instant::now();
            self.check_lease(now);
            if let Some(end) = self.escalate(now) {
                return end;
            }
        }
    }

    fn pass_on(&mut self, signal: i32) {
        let Ok(signal) = Signal::try_from(signal) else {
            return;
        };
        info!(%signal, "passing the signal on to the command's process group");
        let _ = child::signal_group(self.group, signal);
        self.kill_at.get_or_insert(Instant::now() + self.o.grace);
    }

    /// Acts on a loss the first time it is seen: says so, and `SIGTERM`s the group.
    fn check_lease(&mut self, now: Instant) {
        if self.lost.is_some() {
            return;
        }
        let Some(lost) = self.kept.lost() else {
            return;
        };
        self.lost = Some(lost);
        eprintln!(
            "fencelock: lost the lock {} (token {}) after {}: {}; stopping the command \
             (SIGTERM to its process group, SIGKILL after --grace {})",
            self.o.name,
            self.kept.token(),
            human(now - self.started),
            self.why(lost, now),
            human(self.o.grace)
        );
        let _ = child::signal_group(self.group, Signal::SIGTERM);
        self.kill_at.get_or_insert(now + self.o.grace);
    }

    fn why(&self, lost: LeaseLost, now: Instant) -> String {
        match (lost, self.o.max_hold) {
            (LeaseLost::Expired, Some(max)) if now - self.started >= max => {
                format!("{lost} (--max-hold {} reached)", human(max))
            }
            _ => lost.to_string(),
        }
    }

    /// `SIGKILL` once `--grace` is over; gives up [`AFTER_KILL`] later.
    fn escalate(&mut self, now: Instant) -> Option<End> {
        match (self.kill_at, self.killed_at) {
            (Some(at), None) if now >= at => {
                eprintln!(
                    "fencelock: the command did not exit within --grace {}: SIGKILL",
                    human(self.o.grace)
                );
                let _ = child::signal_group(self.group, Signal::SIGKILL);
                self.killed_at = Some(now);
                None
            }
            (_, Some(killed)) if now >= killed + AFTER_KILL => Some(End::Unkillable),
            _ => None,
        }
    }
}

/// Releases the lock and picks the exit code.
fn finish(o: &Options, kept: KeptLease, ended: Ended) -> Result<u8, Failure> {
    let Ended { end, lost, group } = ended;
    let token = kept.token();
    let status = match end {
        End::Exited(status) => status,
        End::WaitFailed(e) => {
            // The command cannot be followed any more: stop it before the lock goes.
            let _ = child::signal_group(group, Signal::SIGKILL);
            let _ = kept.release();
            let message = format!("waiting for the command failed: {e}");
            return Err(Failure::new(exit::OS_ERROR, message));
        }
        End::Unkillable => {
            let _ = kept.release();
            let message = format!(
                "the command did not exit within {} of SIGKILL; the lock is released",
                human(AFTER_KILL)
            );
            // As if SIGKILL had done its work: 128 + 9.
            let code = if lost.is_some() {
                exit::LEASE_LOST
            } else {
                137
            };
            return Err(Failure::new(code, message));
        }
    };
    if lost.is_some() {
        // Said when it happened; what may be left of the lease is released all the same.
        let _ = kept.release();
        return Ok(exit::LEASE_LOST);
    }
    let code = exit::of_status(status);
    match kept.release() {
        Ok(()) => {
            info!(name = %o.name, %token, code, "lock released");
            Ok(code)
        }
        // Lost before the command finished, and not seen yet: it may have run on without it.
        Err(Error::Lost(lost)) => {
            let message = format!(
                "lost the lock {} (token {token}) before the command finished: {lost}",
                o.name
            );
            Err(Failure::new(exit::LEASE_LOST, message))
        }
        Err(e) => {
            // Held to the end: the command's status stands; the lock ends by its TTL.
            eprintln!(
                "fencelock: could not release the lock {} (it ends by its TTL, within {}): {e}",
                o.name,
                human(o.ttl)
            );
            Ok(code)
        }
    }
}

fn cannot_run(program: &OsString, e: &io::Error) -> Failure {
    let code = match e.kind() {
        io::ErrorKind::NotFound => exit::NOT_FOUND,
        _ => exit::CANNOT_EXECUTE,
    };
    let message = format!("cannot run {}: {e}", program.to_string_lossy());
    Failure::new(code, message)
}

/// A duration for people: to the millisecond (`1m 30s`, `499ms`).
pub fn human(d: Duration) -> humantime::FormattedDuration {
    let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis))
}
