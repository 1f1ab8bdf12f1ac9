//! Running the built `fencelock` binary from tests: its stdout read line by line on a thread,
//! its stderr collected, every wait bounded, killed (SIGKILL) on drop. Only 127.0.0.1.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fencelock");

/// The longest any one wait in these tests lasts: far above what each needs (a second or two),
/// so a slow machine does not fail them, and a hang does.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often a wait for a process to exit looks again (`try_wait` has no timeout).
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A `fencelock` process.
pub struct Fencelock {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

/// How a `fencelock` process ended.
#[derive(Debug)]
pub struct Exit {
    /// The exit code (`None` if a signal killed it).
    pub code: Option<i32>,
    /// The stdout lines not read before it exited.
    pub stdout: Vec<String>,
    pub stderr: String,
    /// From start to exit.
    pub took: Duration,
}

impl Fencelock {
    /// Starts `fencelock ARGS…`, its stdin, stdout and stderr piped, without `FENCELOCK_REDIS`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("FENCELOCK_REDIS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fencelock");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line_sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (text_sender, text) = mpsc::channel();
        thread::spawn(move || {
            let mut all = String::new();
            let _ = stderr.read_to_string(&mut all);
            let _ = text_sender.send(all);
        });
        Self {
            stdin: child.stdin.take(),
            child,
            stdout: lines,
            stderr: text,
        }
    }

    /// Runs `fencelock ARGS…` to its end.
    pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Exit {
        let mut fencelock = Self::start(args);
        fencelock.close_stdin();
        fencelock.finish()
    }

    /// `fencelock`'s pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the command (or `fencelock status`) printed; panics after [`PATIENCE`].
    pub fn line(&self) -> String {
        match self.stdout.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(e) => panic!("no line on stdout within {PATIENCE:?}: {e}"),
        }
    }

    /// Writes one line to the command's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to the command's stdin");
        stdin.flush().expect("flush");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, `"KILL"`…) to `fencelock` itself, with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits (at most [`PATIENCE`]) for `fencelock` to exit, then for its output to end.
    pub fn finish(mut self) -> Exit {
        let started = Instant::now();
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(status) => break status,
                None if started.elapsed() < PATIENCE => thread::sleep(EXIT_POLL),
                None => panic!("fencelock did not exit within {PATIENCE:?}"),
            }
        };
        let took = started.elapsed();
        let mut stdout = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stdout still open {PATIENCE:?} on"),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let stderr = self.stderr.recv_timeout(left).expect("stderr to end");
        Exit {
            code: status.code(),
            stdout,
            stderr,
            took,
        }
    }
}

impl Drop for Fencelock {
    fn drop(&mut self) {
        // A test that failed half-way: SIGKILL (the command then gets SIGKILL too, on Linux).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fencelock run --redis URL ARGS…`, as strings.
pub fn run_args(url: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["run".to_owned(), "--redis".to_owned(), url.to_owned()];
    all.extend(args.iter().map(|&a| a.to_owned()));
    all
}

/// A fresh temporary directory for one test's files, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        Self(crate::server::fresh_dir_named(prefix))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `self/name` as a string, for shell commands.
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("a UTF-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
