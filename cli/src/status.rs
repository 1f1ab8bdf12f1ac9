//! `fencelock status`: who holds a lock, for how much longer, and the fenced resource's highest
//! token. A snapshot for people and monitoring: it may have changed by the time it is read.

use std::io::Write;

use fencelock::FencingToken;
use fencelock_redis::LockStatus;
use serde_json::json;

use crate::exit::{self, Failure};
use crate::run::human;
use crate::target::Target;

/// Prints the lock's status (text, or one JSON object) on stdout; exit 0 whether held or free.
pub fn status(target: &Target, name: &str, json: bool) -> Result<u8, Failure> {
    let server = target.open()?;
    let lock = server.lock(name).map_err(|e| target.failure(e))?;
    let held = lock.status().map_err(|e| target.failure(e))?;
    // A fenced resource is data on one server: a quorum has none.
    let fenced = if server.servers() == 1 {
        let resource = server.fenced(name).map_err(|e| target.failure(e))?;
        Some(resource.highest().map_err(|e| target.failure(e))?)
    } else {
        None
    };
    let out = if json {
        format!("{}\n", as_json(name, held, fenced, server.servers()))
    } else {
        as_text(name, held, fenced)
    };
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(|e| Failure::new(exit::OS_ERROR, format!("cannot write to stdout: {e}")))?;
    Ok(0)
}

fn as_json(
    name: &str,
    held: Option<LockStatus>,
    fenced: Option<FencingToken>,
    servers: usize,
) -> serde_json::Value {
    let remaining_ms = held.map(|h| u64::try_from(h.remaining.as_millis()).unwrap_or(u64::MAX));
    json!({
        "name": name,
        "held": held.is_some(),
        "token": held.and_then(|h| h.token).map(FencingToken::get),
        "remaining_ms": remaining_ms,
        "fenced_highest": fenced.map(FencingToken::get),
        "servers": servers,
    })
}

fn as_text(name: &str, held: Option<LockStatus>, fenced: Option<FencingToken>) -> String {
    let lock = match held {
        None => format!("lock {name}: free\n"),
        Some(LockStatus {
            token: Some(token),
            remaining,
        }) => format!(
            "lock {name}: held by token {token}, for {} more\n",
            human(remaining)
        ),
        Some(LockStatus {
            token: None,
            remaining,
        }) => format!(
            "lock {name}: being acquired (token not yet issued), for {} more\n",
            human(remaining)
        ),
    };
    let fenced = match fenced {
        Some(highest) if highest.get() == 0 => {
            format!("fenced resource {name}: no write admitted yet\n")
        }
        Some(highest) => format!("fenced resource {name}: highest token admitted {highest}\n"),
        None => {
            "fenced resource: none on a quorum (a fenced resource lives on one server)\n".to_owned()
        }
    };
    lock + &fenced
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn text_and_json_say_the_same() {
        let held = Some(LockStatus {
            token: Some(FencingToken::new(17)),
            remaining: Duration::from_millis(1500),
        });
        let fenced = Some(FencingToken::new(12));
        assert_eq!(
            as_text("job", held, fenced),
            "lock job: held by token 17, for 1s 500ms more\n\
             fenced resource job: highest token admitted 12\n"
        );
        let value = as_json("job", held, fenced, 1);
        assert_eq!(
            value.to_string(),
            r#"{"fenced_highest":12,"held":true,"name":"job","remaining_ms":1500,"servers":1,"token":17}"#
        );
        let free = as_json("job", None, None, 3);
        assert_eq!(free["held"], false);
        assert!(free["token"].is_null() && free["remaining_ms"].is_null());
        assert!(free["fenced_highest"].is_null());
        assert_eq!(
            as_text("job", None, Some(FencingToken::new(0))),
            "lock job: free\nfenced resource job: no write admitted yet\n"
        );
    }
}
