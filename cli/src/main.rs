//! `fencelock`: a lock on Redis for scripts and cron jobs — what `flock(1)` is on one machine,
//! across machines, with a fencing token for the job and a lease whose loss stops it.
//!
//! ```text
//! fencelock run [--redis URL | --quorum URL,URL,URL] [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
//!               [--ttl 30s] [--wait 10s | --no-wait] [--max-hold DURATION] [--grace 10s]
//!               NAME -- COMMAND [ARGS...]
//! fencelock status [--redis URL | --quorum URL,URL,URL] [--tls-ca FILE ...] [--json] NAME
//! ```
//!
//! `run` takes the lock `NAME` with [`RedisLock::acquire_timeout`](fencelock_redis::RedisLock)
//! (waiting in line, first come first served; `--no-wait`: one try), keeps its lease alive with
//! [`KeepAlive`](fencelock_redis::KeepAlive) while `COMMAND` runs, and releases it when the
//! command exits, exiting as the command did. The command gets `FENCELOCK_TOKEN` (the lease's
//! fencing token, decimal) and `FENCELOCK_NAME`, and runs in a process group of its own, which
//! `fencelock` stops — `SIGTERM`, then `SIGKILL` after `--grace` — if the lease is lost, or when
//! `fencelock` itself is sent `SIGINT`, `SIGTERM`, `SIGHUP` or `SIGQUIT` (passed on as they are).
//!
//! `status` says whether `NAME` is held, by which token and for how much longer, and the highest
//! token the fenced resource `NAME` admitted (single server only).
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | the command's | the command ran and exited with it, with the lease held throughout; `128 + N` if signal `N` killed it |
//! | 64 (`EX_USAGE`) | bad arguments: an empty name, a name with a brace, a TTL out of range, no command, a URL that does not parse, an even quorum, a TLS file that cannot be read; nothing was sent |
//! | 69 (`EX_UNAVAILABLE`) | the lock server could not be reached, or refused (a wrong password, a missing ACL permission); nothing ran |
//! | 71 (`EX_OSERR`) | the operating system failed us (no thread, no signal handler, `wait` failed) |
//! | 75 (`EX_TEMPFAIL`) | the lock is held by someone else: not acquired within `--wait` (at once, with `--no-wait`); nothing ran |
//! | 80 | the lease was lost while the command ran (it ran out, or another holder took the lock over): the command was stopped |
//! | 126, 127 | the command could not be run (not executable; not found), as in a shell |
//!
//! # What is assumed
//!
//! The lease's: the lock server's clock and ours advance at about the same rate, and the server
//! keeps its keys (see fencelock-redis's crate docs, *What is assumed*). A lease can still end
//! while the command writes — a stalled host, a server restart that loses the key — which is why
//! the command gets a fencing token: pass it to whatever it writes, and refuse writes with a
//! smaller token than the last one admitted.
//!
//! The supervision: a lost lease is acted on within 50 ms of [`KeptLease::lost`] reporting it,
//! which is no later than the last renewal's validity ends; the command may run on for up to
//! `--grace` after that. When `fencelock` stops the command (a loss, a signal), what its process
//! group still runs once the command has exited is killed too; after a normal exit, processes
//! the command left in the background are not waited for. On Linux the command gets `SIGKILL`
//! if `fencelock` dies (`kill -9`); that reaches the command, not what it started. The command
//! is not the terminal's foreground process group: one that reads the terminal stops
//! (`SIGTTIN`), as under `timeout(1)` without `--foreground`.
//!
//! [`KeptLease::lost`]: fencelock_redis::KeptLease::lost
//!
//! Verbosity: silent by default (one line on stderr when something goes wrong); `-v` logs the
//! fencelock crates' events at `info` (and warnings), `-vv` at `debug`, `-vvv` at `trace`, to
//! stderr. `RUST_LOG` is not read: it belongs to the command.

#[cfg(not(unix))]
compile_error!(
    "fencelock (the command) runs on unix only: it runs the command in a process group of its own"
);

mod child;
mod exit;
mod run;
mod status;
mod target;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::exit::Failure;
use crate::target::{Servers, Target, TlsFiles};

/// The `run` examples: the help of `fencelock` and of `fencelock run` (lines short enough for
/// a terminal of 80 columns, but the crontab line whole).
macro_rules! run_examples {
    () => {
        "  # Each host's cron starts the report at 3:00; one runs it, the others skip:
  0 3 * * * fencelock run --ttl 5m --no-wait nightly-report -- /usr/local/bin/report.sh

  # Once at a time: wait up to 2 minutes for the lock, hold it 1 hour at most:
  fencelock run --wait 2m --max-hold 1h migrate -- ./migrate.sh

  # TLS and an ACL user; a write carrying the token, so that a late write of an
  # older holder is refused:
  fencelock run --redis rediss://deploy:secret@redis.example:6380 ledger -- \\
    sh -c 'psql -c \"UPDATE ledger SET fence = $FENCELOCK_TOKEN, ...
                     WHERE fence <= $FENCELOCK_TOKEN\"'
"
    };
}

/// The exit codes and the environment of `fencelock run`.
macro_rules! run_codes {
    () => {
        "Exit codes:
  the command's own   it ran holding the lock throughout (128+N: killed by signal N)
  64                  bad arguments; nothing was sent
  69                  the lock server is unreachable, or refused; nothing ran
  71                  an OS error (no thread, no signal handler)
  75                  the lock is held elsewhere (not had within --wait); nothing ran
  80                  the lease was lost while the command ran: it was stopped
  126, 127            the command is not executable, not found

Environment:
  FENCELOCK_REDIS     the lock server when --redis and --quorum are not given
                      (default: redis://127.0.0.1:6379)
  The command gets FENCELOCK_TOKEN (the lease's fencing token) and FENCELOCK_NAME.
"
    };
}

const HELP: &str = concat!(
    "Examples:\n",
    run_examples!(),
    "\n  # Who holds it, and for how much longer:\n",
    "  fencelock status nightly-report\n\n",
    run_codes!()
);

const RUN_HELP: &str = concat!("Examples:\n", run_examples!(), "\n", run_codes!());

const STATUS_HELP: &str = "Examples:
  fencelock status nightly-report
  fencelock status --json --quorum redis://a:6379,redis://b:6379,redis://c:6379 job

Exit codes: 0 answered (held or free); 64 bad arguments; 69 the lock server is
unreachable, or refused.
";

/// A Redis lock for scripts and cron jobs, with a fencing token for the job.
#[derive(Debug, Parser)]
#[command(name = "fencelock", version, after_help = HELP, arg_required_else_help = true)]
struct Cli {
    /// Log to stderr: -v info, -vv debug, -vvv trace [default: silent]
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run COMMAND holding the lock NAME, its lease kept alive; stop COMMAND if the lease is lost.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Whether the lock NAME is held, by which token, for how much longer.
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
}

/// Where the lock lives.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The lock server [default: $FENCELOCK_REDIS, else redis://127.0.0.1:6379]
    ///
    /// redis://[USER:PASSWORD@]HOST:PORT[/DB], or rediss://... for TLS (verified against the
    /// system's roots, or --tls-ca).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "quorum",
        verbatim_doc_comment
    )]
    redis: Option<String>,
    /// A quorum of independent lock servers (an odd number)
    ///
    /// Each lease is held on a majority of them; any minority may be down.
    #[arg(
        long,
        value_name = "URL,URL,URL",
        value_delimiter = ',',
        verbatim_doc_comment
    )]
    quorum: Option<Vec<String>>,
    /// A CA certificate (PEM) to verify rediss:// servers with, instead of the system's roots
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) for servers that require one (mutual TLS)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The lease's time to live, renewed every third of it
    ///
    /// How long the lock outlives a fencelock that died without releasing it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    #[arg(verbatim_doc_comment)]
    ttl: Duration,
    /// How long to wait in line for the lock before exiting 75
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    wait: Duration,
    /// Exit 75 at once if the lock is held
    #[arg(long, conflicts_with = "wait")]
    no_wait: bool,
    /// Stop renewing this long after COMMAND started [default: no limit]
    ///
    /// The lease then runs out (within one TTL), and COMMAND is stopped as for a lost lease
    /// (exit 80): a stuck job cannot hold the lock forever.
    #[arg(long, value_name = "DURATION", value_parser = duration, verbatim_doc_comment)]
    max_hold: Option<Duration>,
    /// How long COMMAND has to exit after SIGTERM before SIGKILL
    ///
    /// Applies when the lease is lost (SIGTERM) and when fencelock is sent SIGINT, SIGTERM,
    /// SIGHUP or SIGQUIT (passed on to COMMAND's process group as it is).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    #[arg(verbatim_doc_comment)]
    grace: Duration,
    /// The lock's name (at most 1024 bytes, no braces)
    #[arg(value_name = "NAME")]
    name: String,
    /// The command and its arguments, after `--`
    #[arg(value_name = "COMMAND", last = true, required = true, num_args = 1..)]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print one JSON object
    ///
    /// {"name", "held", "token", "remaining_ms", "fenced_highest", "servers"}: token,
    /// remaining_ms null when free; fenced_highest null on a quorum.
    #[arg(long, verbatim_doc_comment)]
    json: bool,
    /// The lock's name
    #[arg(value_name = "NAME")]
    name: String,
}

/// A duration as `humantime` reads it: `500ms`, `30s`, `5m`, `1h 30m`.
fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

impl ServerArgs {
    fn target(self) -> Target {
        let env = std::env::var("FENCELOCK_REDIS").ok();
        Target {
            servers: Servers::resolve(self.redis, self.quorum, env),
            tls: TlsFiles {
                ca: self.tls_ca,
                client: self.tls_cert.zip(self.tls_key),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` print to stdout and succeed; every other error is usage.
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    log_to_stderr(cli.verbose);
    let outcome = match cli.command {
        Command::Run(args) => run::run(run::Options {
            target: args.server.target(),
            ttl: args.ttl,
            wait: if args.no_wait {
                Duration::ZERO
            } else {
                args.wait
            },
            max_hold: args.max_hold,
            grace: args.grace,
            name: args.name,
            command: args.command,
        }),
        Command::Status(args) => status::status(&args.server.target(), &args.name, args.json),
    };
    ExitCode::from(outcome.unwrap_or_else(Failure::report))
}

/// Installs a subscriber for `-v` and more; none (silence) without.
fn log_to_stderr(verbose: u8) {
    let level = match verbose {
        0 => return,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // `fencelock` covers the library and this binary (whose crate is `fencelock` too).
    let filter =
        tracing_subscriber::EnvFilter::new(format!("fencelock={level},fencelock_redis={level}"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
