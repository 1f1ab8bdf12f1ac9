//! A wall clock set ahead or behind, for one `redis-server` at a time: an `LD_PRELOAD` shim,
//! built here with the system C compiler (`cc`) once per test process, as the issue asked.
//!
//! The shim interposes `gettimeofday`, `time` and `clock_gettime` (`CLOCK_REALTIME` and
//! `CLOCK_REALTIME_COARSE` only, never the monotonic clocks, so timeouts and event loops run as
//! usual), adding `FENCELOCK_CLOCK_SHIFT_SECONDS` (read once; default 0) to what the real
//! functions (`dlsym(RTLD_NEXT, ...)`) return. Only the processes started with it in their
//! environment are affected: the test's own servers, through [`shifted`]. Redis 7.0 reads its
//! wall clock with `gettimeofday` (`TIME`, key expiry), so that one does the work there; the
//! other two are for whatever else reads the time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::server::Options;

/// The shift, in seconds (a signed integer), read by the shim.
pub const SHIFT_VAR: &str = "FENCELOCK_CLOCK_SHIFT_SECONDS";

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*gettimeofday_fn)(struct timeval *, void *);
typedef time_t (*time_fn)(time_t *);

static clock_gettime_fn real_clock_gettime;
static gettimeofday_fn real_gettimeofday;
static time_fn real_time;
static long long shift;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void resolve_once(void) {
    const char *seconds = getenv("FENCELOCK_CLOCK_SHIFT_SECONDS");
    shift = seconds ? strtoll(seconds, NULL, 10) : 0;
    real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    real_gettimeofday = (gettimeofday_fn)dlsym(RTLD_NEXT, "gettimeofday");
    real_time = (time_fn)dlsym(RTLD_NEXT, "time");
}

/* Once, at load time or at the first call, whichever comes first (another library's
   constructor may read the clock before ours runs). */
static void resolve(void) { pthread_once(&once, resolve_once); }

__attribute__((constructor)) static void init(void) { resolve(); }

int clock_gettime(clockid_t id, struct timespec *ts) {
    resolve();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        ts->tv_sec += shift;
    }
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    resolve();
    int rc = real_gettimeofday(tv, tz);
    if (rc == 0) {
        tv->tv_sec += shift;
    }
    return rc;
}

time_t time(time_t *out) {
    resolve();
    time_t now = real_time(NULL);
    if (now != (time_t)-1) {
        now += shift;
    }
    if (out) {
        *out = now;
    }
    return now;
}
"#;

/// The shim's path, built on first use (once per test process) in a fresh temporary directory.
///
/// # Panics
/// If `cc` is not installed, or the build fails.
pub fn shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(build).clone()
}

/// `options` with the shim preloaded and the wall clock `seconds` ahead (behind if negative).
pub fn shifted(options: Options, seconds: i64) -> Options {
    options
        .env("LD_PRELOAD", shim().to_string_lossy())
        .env(SHIFT_VAR, seconds.to_string())
}

const DIR_PREFIX: &str = "fencelock-clockshift-";

fn build() -> PathBuf {
    remove_dirs_of_ended_processes();
    let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the clock shim's temporary directory");
    std::fs::write(dir.join("shim.c"), SHIM_C).expect("write the clock shim's source");
    compile(&dir);
    dir.join("libclockshift.so")
}

fn compile(dir: &Path) {
    let output = Command::new("cc")
        .current_dir(dir)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            "libclockshift.so",
            "shim.c",
            "-ldl",
        ])
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`cc` is not on PATH. The clock tests build an LD_PRELOAD shim with the system C \
             compiler: install gcc (`apt-get install -y gcc`), then run the tests again."
        ),
        Err(e) => panic!("could not run `cc` to build the clock shim: {e}"),
    };
    assert!(
        output.status.success(),
        "building the clock shim failed (`cc -shared -fPIC -O2 -o libclockshift.so shim.c -ldl` \
         in {}):\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The shim stays on disk while this process runs (its servers load it at every restart): the
/// directories of earlier test processes, which have ended (no `/proc/PID`), are removed here.
fn remove_dirs_of_ended_processes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(DIR_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new("/proc").join(pid.to_string()).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
