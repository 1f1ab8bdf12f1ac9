//! This test binary run again as a child process — one `#[ignore]`d test of it, chosen with
//! `--exact NAME --ignored` and told what to do by environment variables — so that a test can
//! put several *processes* on one lock. Killed (and reaped) on drop; waited for with a bound.

#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A child running one test of this binary.
pub struct ChildTest(Child);

impl ChildTest {
    /// Runs the ignored test `name` of this binary with `env`, its stdout piped.
    pub fn spawn(name: &str, env: &[(&str, &str)]) -> Self {
        let exe = std::env::current_exe().expect("the test binary");
        let child = Command::new(exe)
            .args([
                "--exact",
                name,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a child test process");
        Self(child)
    }

    /// Waits for the child until `deadline` (panicking past it) and returns its output; panics
    /// unless it succeeded. Bounded: a child prints a few lines, so polling cannot deadlock on a
    /// full pipe.
    pub fn output_by(&mut self, deadline: Instant) -> String {
        let status = loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "a child test process did not finish in time"
            );
            thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            stdout
                .read_to_string(&mut out)
                .expect("read the child's output");
        }
        assert!(status.success(), "child: {status}, output:\n{out}");
        out
    }
}

impl Drop for ChildTest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
