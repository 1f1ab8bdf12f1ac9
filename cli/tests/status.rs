//! `fencelock status`, text and `--json`, on a held and a free lock, one server and a quorum.

#[path = "../../redis/tests/support/server.rs"]
mod server;
mod support;

use std::time::Duration;

use fencelock_redis::LockServer;
use serde_json::Value;
use server::RedisProcess;
use support::{run_args, Fencelock};

fn status(args: &[&str]) -> (String, Value) {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    let text = Fencelock::run(&all);
    assert_eq!(text.code, Some(0), "{text:?}");
    assert_eq!(text.stderr, "", "{text:?}");
    all.push("--json");
    let json = Fencelock::run(&all);
    assert_eq!(json.code, Some(0), "{json:?}");
    assert_eq!(json.stdout.len(), 1, "one line, one object: {json:?}");
    let value: Value = serde_json::from_str(&json.stdout[0]).expect("JSON");
    (text.stdout.join("\n"), value)
}

#[test]
fn status_of_a_held_and_a_free_lock() {
    let redis = RedisProcess::start();
    let url = redis.url();

    let (text, json) = status(&["--redis", &url, "report"]);
    assert_eq!(
        text,
        "lock report: free\nfenced resource report: no write admitted yet"
    );
    assert_eq!(json["name"], "report");
    assert_eq!(json["held"], false);
    assert!(
        json["token"].is_null() && json["remaining_ms"].is_null(),
        "{json}"
    );
    assert_eq!(
        (json["fenced_highest"].as_u64(), json["servers"].as_u64()),
        (Some(0), Some(1))
    );

    // Held by a `fencelock run` whose command waits for a line from the test.
    let script = "echo \"ready $FENCELOCK_TOKEN\"; read line";
    let mut holder = Fencelock::start(&run_args(
        &url,
        &["--ttl", "30s", "report", "--", "sh", "-c", script],
    ));
    let token: u64 = holder.line()["ready ".len()..].parse().expect("token");
    // A fenced write with the holder's token, as the job would make (through the library).
    let fenced = LockServer::open(&url)
        .and_then(|server| server.fenced("report"))
        .expect("a fenced resource");
    let mut write = fencelock_redis::redis::pipe();
    write.cmd("SET").arg("report:{report}").arg("done");
    fenced
        .write(fencelock::FencingToken::new(token), &write)
        .expect("the holder's write is admitted");

    let (text, json) = status(&["--redis", &url, "report"]);
    assert!(
        text.starts_with(&format!("lock report: held by token {token}, for ")),
        "{text}"
    );
    assert!(
        text.ends_with(&format!(
            "fenced resource report: highest token admitted {token}"
        )),
        "{text}"
    );
    assert_eq!(json["held"], true, "{json}");
    assert_eq!(json["token"].as_u64(), Some(token), "{json}");
    let remaining = json["remaining_ms"].as_u64().expect("remaining_ms");
    assert!(remaining > 0 && remaining <= 30_000, "{json}");
    assert_eq!(json["fenced_highest"].as_u64(), Some(token), "{json}");

    holder.send_line("done");
    assert_eq!(holder.finish().code, Some(0));
    let (text, json) = status(&["--redis", &url, "report"]);
    assert!(text.starts_with("lock report: free\n"), "{text}");
    assert_eq!(json["held"], false, "{json}");
}

#[test]
fn status_on_a_quorum_has_no_fenced_resource() {
    let servers: Vec<RedisProcess> = (0..3).map(|_| RedisProcess::start()).collect();
    let urls: Vec<String> = servers.iter().map(RedisProcess::url).collect();
    let quorum = urls.join(",");
    let (text, json) = status(&["--quorum", &quorum, "q"]);
    assert_eq!(
        text,
        "lock q: free\nfenced resource: none on a quorum (a fenced resource lives on one server)"
    );
    assert!(json["fenced_highest"].is_null(), "{json}");
    assert_eq!(json["servers"].as_u64(), Some(3));

    let lock = fencelock_redis::RedisLock::quorum(
        &urls.iter().map(String::as_str).collect::<Vec<_>>(),
        "q",
    )
    .expect("a quorum lock");
    let lease = lock
        .try_acquire(Duration::from_secs(30))
        .expect("the quorum answers")
        .expect("free");
    let (text, json) = status(&["--quorum", &quorum, "q"]);
    assert!(
        text.starts_with(&format!("lock q: held by token {}, for ", lease.token())),
        "{text}"
    );
    assert_eq!(json["token"].as_u64(), Some(lease.token().get()), "{json}");
    lease.release().expect("released");
}
