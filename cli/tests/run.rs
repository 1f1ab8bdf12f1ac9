//! `fencelock run`, the built binary against real `redis-server`s on 127.0.0.1: exclusion,
//! tokens, exit codes, a lost lease, signals.

#[path = "../../redis/tests/support/server.rs"]
mod server;
mod support;

use std::path::Path;

use server::RedisProcess;
use support::{run_args, Fencelock, TempDir};

/// `fencelock run`'s codes (see `src/exit.rs`).
const USAGE: i32 = 64;
const UNAVAILABLE: i32 = 69;
const TEMP_FAIL: i32 = 75;
const LEASE_LOST: i32 = 80;

/// A token from a line `PREFIX TOKEN`.
fn token_in(line: &str, prefix: &str) -> u64 {
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
    rest.trim().parse().expect("a decimal token")
}

#[test]
fn runs_on_one_name_never_overlap_and_tokens_grow() {
    let redis = RedisProcess::start();
    let dir = TempDir::new("fencelock-cli-overlap");
    let log = dir.file("log");
    // Each run writes its start, works a little, writes its end. Without the lock the three
    // (started together) would interleave.
    let script = format!(
        "echo \"start $(date +%s%N) $FENCELOCK_TOKEN\" >> {log}; sleep 0.2; \
         echo \"end $(date +%s%N)\" >> {log}"
    );
    let args = run_args(
        &redis.url(),
        &[
            "--ttl", "5s", "--wait", "15s", "overlap", "--", "sh", "-c", &script,
        ],
    );
    let runs: Vec<Fencelock> = (0..3).map(|_| Fencelock::start(&args)).collect();
    for run in runs {
        let exit = run.finish();
        assert_eq!(exit.code, Some(0), "{exit:?}");
        assert_eq!(exit.stderr, "", "silent when all goes well");
    }
    let text = std::fs::read_to_string(&log).expect("the log");
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 6, "{text}");
    let mut last_end = 0_u128;
    let mut last_token = 0_u64;
    for pair in lines.chunks(2) {
        // In the file's order: start, end, start, end, ... — never two starts in a row.
        assert_eq!((pair[0][0], pair[1][0]), ("start", "end"), "{text}");
        let start: u128 = pair[0][1].parse().expect("ns");
        let end: u128 = pair[1][1].parse().expect("ns");
        let token: u64 = pair[0][2].parse().expect("token");
        assert!(last_end <= start && start <= end, "overlap:\n{text}");
        assert!(token > last_token, "tokens must grow:\n{text}");
        (last_end, last_token) = (end, token);
    }
}

#[test]
fn the_token_grows_between_runs_and_the_name_is_passed() {
    let redis = RedisProcess::start();
    let run = || {
        let script = "echo \"$FENCELOCK_NAME $FENCELOCK_TOKEN\"";
        let exit = Fencelock::run(&run_args(&redis.url(), &["job", "--", "sh", "-c", script]));
        assert_eq!(exit.code, Some(0), "{exit:?}");
        assert_eq!(exit.stdout.len(), 1, "{exit:?}");
        token_in(&exit.stdout[0], "job ")
    };
    let first = run();
    let second = run();
    assert!(first > 0 && second > first, "{first} then {second}");
}

#[test]
fn no_wait_exits_75_while_the_lock_is_held() {
    let redis = RedisProcess::start();
    let dir = TempDir::new("fencelock-cli-held");
    // The holder's command waits for a line on its stdin, which the test writes when it is done.
    let holder_script = "echo \"ready $FENCELOCK_TOKEN\"; read line; echo done";
    let mut holder = Fencelock::start(&run_args(
        &redis.url(),
        &["--ttl", "10s", "held", "--", "sh", "-c", holder_script],
    ));
    let token = token_in(&holder.line(), "ready ");

    let ran = dir.file("ran");
    let touch = format!("touch {ran}");
    let refused = Fencelock::run(&run_args(
        &redis.url(),
        &["--no-wait", "held", "--", "sh", "-c", &touch],
    ));
    assert_eq!(refused.code, Some(TEMP_FAIL), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "one line: {refused:?}");
    assert!(
        refused
            .stderr
            .starts_with("fencelock: the lock held is held by token ")
            && refused.stderr.contains(&token.to_string())
            && refused.stderr.contains("--no-wait"),
        "{refused:?}"
    );
    let waited = Fencelock::run(&run_args(
        &redis.url(),
        &["--wait", "300ms", "held", "--", "sh", "-c", &touch],
    ));
    assert_eq!(waited.code, Some(TEMP_FAIL), "{waited:?}");
    assert!(waited.stderr.contains("not acquired within --wait 300ms"));
    assert!(
        !Path::new(&ran).exists(),
        "nothing ran while the lock was held"
    );

    holder.send_line("go");
    let released = holder.finish();
    assert_eq!(
        (released.code, released.stdout),
        (Some(0), vec!["done".to_owned()])
    );
    let after = Fencelock::run(&run_args(
        &redis.url(),
        &["--no-wait", "held", "--", "sh", "-c", &touch],
    ));
    assert_eq!(after.code, Some(0), "released: {after:?}");
    assert!(Path::new(&ran).exists());
}

#[test]
fn a_lost_lease_stops_the_command_and_exits_80() {
    let mut redis = RedisProcess::start();
    let dir = TempDir::new("fencelock-cli-lost");
    let after = dir.file("after");
    // The command would write its marker once it gets a line, which it never does.
    let script = format!("echo ready; read line; touch {after}");
    let running = Fencelock::start(&run_args(
        &redis.url(),
        &[
            "--ttl", "500ms", "--grace", "5s", "lost", "--", "sh", "-c", &script,
        ],
    ));
    assert_eq!(running.line(), "ready");
    // The server stops answering: renewals time out, the lease runs out 500 ms after the last.
    redis.pause();
    let exit = running.finish();
    redis.resume();
    assert_eq!(exit.code, Some(LEASE_LOST), "{exit:?}");
    assert!(
        exit.stderr
            .starts_with("fencelock: lost the lock lost (token ")
            && exit.stderr.contains("the lease ran out")
            && exit.stderr.contains("SIGTERM to its process group"),
        "{exit:?}"
    );
    assert!(
        !exit.stderr.contains("did not exit"),
        "SIGTERM sufficed: {exit:?}"
    );
    assert!(
        !Path::new(&after).exists(),
        "the command ran on after the loss"
    );
}

#[test]
fn a_lease_taken_over_names_the_new_token() {
    let redis = RedisProcess::start();
    let dir = TempDir::new("fencelock-cli-taken");
    let after = dir.file("after");
    let script = format!("echo ready; read line; touch {after}");
    let running = Fencelock::start(&run_args(
        &redis.url(),
        &["--ttl", "3s", "taken", "--", "sh", "-c", &script],
    ));
    assert_eq!(running.line(), "ready");
    // The server loses the key (as in a restart without persistence), and another client takes
    // the lock: the holder's next renewal (within a third of the TTL) finds the newer token.
    let mut con = fencelock_redis::redis::Client::open(redis.url())
        .and_then(|client| client.get_connection())
        .expect("a connection");
    let deleted: i64 = fencelock_redis::redis::cmd("DEL")
        .arg("fencelock:{taken}:lock")
        .query(&mut con)
        .expect("DEL");
    assert_eq!(deleted, 1, "the lock's key, as the crate docs name it");
    let lock = fencelock_redis::RedisLock::open(&redis.url(), "taken").expect("a lock");
    let newer = lock
        .try_acquire(std::time::Duration::from_secs(30))
        .expect("the server answers")
        .expect("the key is gone: free");
    let exit = running.finish();
    assert_eq!(exit.code, Some(LEASE_LOST), "{exit:?}");
    let taken_over = format!("the lease was taken over by token {}", newer.token());
    assert!(exit.stderr.contains(&taken_over), "{exit:?}");
    assert!(!Path::new(&after).exists());
    newer.release().expect("still held");
}

#[test]
fn max_hold_ends_the_lease_and_stops_the_command() {
    let redis = RedisProcess::start();
    let dir = TempDir::new("fencelock-cli-max-hold");
    let after = dir.file("after");
    let script = format!("echo ready; read line; touch {after}");
    let args = [
        "--ttl",
        "300ms",
        "--max-hold",
        "200ms",
        "capped",
        "--",
        "sh",
        "-c",
        &script,
    ];
    let running = Fencelock::start(&run_args(&redis.url(), &args));
    assert_eq!(running.line(), "ready");
    let exit = running.finish();
    assert_eq!(exit.code, Some(LEASE_LOST), "{exit:?}");
    assert!(
        exit.stderr.contains("(--max-hold 200ms reached)"),
        "{exit:?}"
    );
    assert!(!Path::new(&after).exists());
}

#[test]
fn the_command_s_exit_status_passes_through() {
    let redis = RedisProcess::start();
    // `--no-wait` each time: a run that did not release would make the next one exit 75.
    let code = |command: &[&str]| {
        let mut args = vec!["--no-wait", "status-code", "--"];
        args.extend_from_slice(command);
        let exit = Fencelock::run(&run_args(&redis.url(), &args));
        (exit.code, exit.stderr)
    };
    assert_eq!(code(&["sh", "-c", "exit 7"]), (Some(7), String::new()));
    assert_eq!(code(&["sh", "-c", "exit 0"]), (Some(0), String::new()));
    // Killed by a signal: 128 + N, as a shell says.
    let killed = code(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!(killed, (Some(128 + 15), String::new()));
    let (missing, said) = code(&["/nonexistent/fencelock-test-command"]);
    assert_eq!(missing, Some(127));
    assert!(
        said.starts_with("fencelock: cannot run /nonexistent/"),
        "{said}"
    );
    assert_eq!(code(&["/"]).0, Some(126), "not executable");
    assert_eq!(code(&["true"]), (Some(0), String::new()));
}

#[test]
fn bad_input_is_a_usage_error_before_anything_is_sent() {
    // A closed port: anything sent would fail with 69, not 64.
    let closed = format!("redis://127.0.0.1:{}", server::free_port());
    let cases: &[&[&str]] = &[
        &["--ttl", "0s", "job", "--", "true"],
        &["--ttl", "4ms", "job", "--", "true"],
        &["--ttl", "soon", "job", "--", "true"],
        &["", "--", "true"],
        &["a{b}", "--", "true"],
        &["job"],
        &["job", "--"],
        &["job", "true"],
        &["--no-wait", "--wait", "1s", "job", "--", "true"],
    ];
    for case in cases {
        let exit = Fencelock::run(&run_args(&closed, case));
        assert_eq!(exit.code, Some(USAGE), "{case:?}: {exit:?}");
        assert!(exit.stderr.contains("fencelock") || exit.stderr.contains("error"));
        assert!(exit.stdout.is_empty(), "{case:?}: {exit:?}");
    }
    let even = Fencelock::run(&[
        "run",
        "--quorum",
        "redis://127.0.0.1:1,redis://127.0.0.1:2",
        "job",
        "--",
        "true",
    ]);
    assert_eq!(even.code, Some(USAGE), "{even:?}");
    let not_a_url = Fencelock::run(&["run", "--redis", "http://127.0.0.1:1", "job", "--", "true"]);
    assert_eq!(not_a_url.code, Some(USAGE), "{not_a_url:?}");
    assert_eq!(Fencelock::run(&["bogus"]).code, Some(USAGE));
    assert_eq!(Fencelock::run::<&str>(&[]).code, Some(USAGE));
}

#[test]
fn help_and_version_succeed_with_examples() {
    let help = Fencelock::run(&["run", "--help"]);
    assert_eq!(help.code, Some(0), "{help:?}");
    let text = help.stdout.join("\n");
    assert!(
        text.contains(
            "0 3 * * * fencelock run --ttl 5m --no-wait nightly-report -- /usr/local/bin/report.sh"
        ),
        "{text}"
    );
    assert!(text.contains("FENCELOCK_TOKEN") && text.contains("80 "));
    assert_eq!(Fencelock::run(&["--help"]).code, Some(0));
    let version = Fencelock::run(&["--version"]);
    assert_eq!(version.code, Some(0));
    assert!(version.stdout[0].starts_with("fencelock "), "{version:?}");
}

#[test]
fn an_unreachable_server_is_69_and_nothing_runs() {
    let dir = TempDir::new("fencelock-cli-unreachable");
    let ran = dir.file("ran");
    let port = server::free_port(); // nothing listens there
    let url = format!("redis://app:secret@127.0.0.1:{port}");
    let touch = format!("touch {ran}");
    let exit = Fencelock::run(&run_args(&url, &["job", "--", "sh", "-c", &touch]));
    assert_eq!(exit.code, Some(UNAVAILABLE), "{exit:?}");
    let expected =
        format!("fencelock: cannot reach the lock server at redis://app:***@127.0.0.1:{port}: ");
    assert!(exit.stderr.starts_with(&expected), "{exit:?}");
    assert_eq!(exit.stderr.lines().count(), 1, "{exit:?}");
    assert!(
        !exit.stderr.contains("secret"),
        "the password is not printed"
    );
    assert!(!Path::new(&ran).exists());
    let status = Fencelock::run(&["status", "--redis", &url, "job"]);
    assert_eq!(status.code, Some(UNAVAILABLE), "{status:?}");
    assert!(status.stderr.starts_with(&expected), "{status:?}");
}

#[test]
fn signals_are_passed_on_to_the_command_and_the_lock_released() {
    let redis = RedisProcess::start();
    // The command traps SIGTERM and exits 3: fencelock exits 3 too.
    let script = "trap 'echo got-term; exit 3' TERM; echo ready; read line; echo not-reached";
    let running = Fencelock::start(&run_args(
        &redis.url(),
        &["--ttl", "10s", "signals", "--", "sh", "-c", script],
    ));
    assert_eq!(running.line(), "ready");
    running.signal("TERM");
    let exit = running.finish();
    assert_eq!(
        (exit.code, exit.stdout),
        (Some(3), vec!["got-term".to_owned()])
    );
    let next = Fencelock::run(&run_args(
        &redis.url(),
        &["--no-wait", "signals", "--", "true"],
    ));
    assert_eq!(next.code, Some(0), "released: {next:?}");

    // SIGINT the same way.
    let script = "trap 'echo got-int; exit 4' INT; echo ready; read line";
    let running = Fencelock::start(&run_args(
        &redis.url(),
        &["signals", "--", "sh", "-c", script],
    ));
    assert_eq!(running.line(), "ready");
    running.signal("INT");
    let exit = running.finish();
    assert_eq!(
        (exit.code, exit.stdout),
        (Some(4), vec!["got-int".to_owned()])
    );
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace() {
    let redis = RedisProcess::start();
    let script = "trap '' TERM; echo ready; read line; echo not-reached";
    let running = Fencelock::start(&run_args(
        &redis.url(),
        &["--grace", "300ms", "stubborn", "--", "sh", "-c", script],
    ));
    assert_eq!(running.line(), "ready");
    running.signal("TERM");
    let exit = running.finish();
    assert_eq!(exit.code, Some(128 + 9), "{exit:?}");
    assert!(exit.stdout.is_empty(), "{exit:?}");
    assert!(
        exit.stderr
            .contains("did not exit within --grace 300ms: SIGKILL"),
        "{exit:?}"
    );
    let next = Fencelock::run(&run_args(
        &redis.url(),
        &["--no-wait", "stubborn", "--", "true"],
    ));
    assert_eq!(next.code, Some(0), "released: {next:?}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_command_dies_with_a_killed_fencelock() {
    let redis = RedisProcess::start();
    let running = Fencelock::start(&run_args(
        &redis.url(),
        &["orphan", "--", "sh", "-c", "echo $$; read line"],
    ));
    let pid: u32 = running.line().parse().expect("the command's pid");
    running.signal("KILL");
    let exit = running.finish();
    assert_eq!(exit.code, None, "killed");
    // The command got SIGKILL as its parent died: gone, or a zombie waiting for init.
    let stat = Path::new("/proc").join(pid.to_string()).join("stat");
    let deadline = std::time::Instant::now() + support::PATIENCE;
    loop {
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(text)
                if text
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                break
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(text) => panic!("the command outlived fencelock: {text}"),
        }
    }
}

#[test]
fn a_quorum_runs_the_command_with_a_token() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisProcess::url).collect();
    let quorum = urls.join(",");
    let script = "echo \"token $FENCELOCK_TOKEN\"";
    let run = || {
        let exit = Fencelock::run(&["run", "--quorum", &quorum, "q", "--", "sh", "-c", script]);
        assert_eq!(exit.code, Some(0), "{exit:?}");
        token_in(&exit.stdout[0], "token ")
    };
    let first = run();
    assert!(run() > first);
}
