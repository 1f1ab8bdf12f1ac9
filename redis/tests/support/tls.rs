//! Throwaway TLS certificates for the TLS tests, made with the `openssl` CLI in a fresh temporary
//! directory that is removed on drop.
//!
//! Everything is EC P-256, valid for 1 day, keys in PKCS#8 PEM (`openssl genpkey`). The server
//! certificate names `IP:127.0.0.1` (clients verify 127.0.0.1); the client certificate is for
//! mutual TLS; `other_ca_cert` is an unrelated CA, for "wrong CA" tests.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::server::{RedisProcess, TlsFiles};

/// How long one `openssl` command may take.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);

/// The `openssl` configuration: our own, so the system's `openssl.cnf` does not matter.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A CA, a server and a client certificate signed by it, and a second, unrelated CA.
pub struct Certificates {
    /// The temporary directory holding every file below; removed on drop.
    pub dir: PathBuf,
    /// The CA's self-signed certificate (PEM).
    pub ca_cert: PathBuf,
    /// The server's certificate, signed by the CA, subjectAltName `IP:127.0.0.1` (PEM).
    pub server_cert: PathBuf,
    /// The server's private key (PKCS#8 PEM).
    pub server_key: PathBuf,
    /// The client's certificate, signed by the CA, for mutual TLS (PEM).
    pub client_cert: PathBuf,
    /// The client's private key (PKCS#8 PEM).
    pub client_key: PathBuf,
    /// A second, unrelated CA's self-signed certificate (PEM): it signed nothing here.
    pub other_ca_cert: PathBuf,
}

impl Certificates {
    /// Makes a fresh set of certificates in a new temporary directory. Panics (with `openssl`'s
    /// stderr) if any step fails, or with install advice if `openssl` is not on PATH.
    pub fn make() -> Certificates {
        let dir = fresh_dir();
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, OPENSSL_CNF).expect("write openssl.cnf");
        let certs = Certificates {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca_cert: dir.join("other-ca.crt"),
            dir,
        };
        let ca_key = certs.dir.join("ca.key");
        let other_ca_key = certs.dir.join("other-ca.key");

        self_signed_ca(&cnf, &ca_key, &certs.ca_cert, "fencelock test CA");
        self_signed_ca(
            &cnf,
            &other_ca_key,
            &certs.other_ca_cert,
            "fencelock unrelated CA",
        );
        let ca = (certs.ca_cert.as_path(), ca_key.as_path());
        signed_leaf(
            &cnf,
            ca,
            &certs.server_key,
            &certs.server_cert,
            "127.0.0.1",
            "server",
            "1001",
        );
        signed_leaf(
            &cnf,
            ca,
            &certs.client_key,
            &certs.client_cert,
            "fencelock test client",
            "client",
            "1002",
        );
        certs
    }

    /// The files a TLS [`RedisProcess`] needs: the server's certificate and key, the CA that
    /// verifies clients, and the client certificate and key its readiness check presents.
    pub fn tls_files(&self, require_client_cert: bool) -> TlsFiles {
        TlsFiles {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            ca: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            require_client_cert,
        }
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a TLS-only `redis-server` using `certs` (see [`RedisProcess::start_tls`]).
pub fn start_tls(certs: &Certificates, require_client_cert: bool) -> RedisProcess {
    RedisProcess::start_tls(certs.tls_files(require_client_cert))
}

/// The bytes of a PEM (or any) file; panics naming the file if it cannot be read.
pub fn pem(path: impl AsRef<Path>) -> Vec<u8> {
    let path = path.as_ref();
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn new_key(key: &Path) {
    openssl([
        OsStr::new("genpkey"),
        OsStr::new("-algorithm"),
        OsStr::new("EC"),
        OsStr::new("-pkeyopt"),
        OsStr::new("ec_paramgen_curve:P-256"),
        OsStr::new("-out"),
        key.as_os_str(),
    ]);
}

fn self_signed_ca(cnf: &Path, key: &Path, cert: &Path, name: &str) {
    new_key(key);
    let subject = format!("/CN={name}");
    openssl([
        OsStr::new("req"),
        OsStr::new("-x509"),
        OsStr::new("-new"),
        OsStr::new("-config"),
        cnf.as_os_str(),
        OsStr::new("-extensions"),
        OsStr::new("ca"),
        OsStr::new("-key"),
        key.as_os_str(),
        OsStr::new("-sha256"),
        OsStr::new("-days"),
        OsStr::new("1"),
        OsStr::new("-subj"),
        OsStr::new(&subject),
        OsStr::new("-out"),
        cert.as_os_str(),
    ]);
}

fn signed_leaf(
    cnf: &Path,
    (ca_cert, ca_key): (&Path, &Path),
    key: &Path,
    cert: &Path,
    common_name: &str,
    extensions: &str,
    serial: &str,
) {
    new_key(key);
    let csr = cert.with_extension("csr");
    let subject = format!("/CN={common_name}");
    openssl([
        OsStr::new("req"),
        OsStr::new("-new"),
        OsStr::new("-config"),
        cnf.as_os_str(),
        OsStr::new("-key"),
        key.as_os_str(),
        OsStr::new("-subj"),
        OsStr::new(&subject),
        OsStr::new("-out"),
        csr.as_os_str(),
    ]);
    openssl([
        OsStr::new("x509"),
        OsStr::new("-req"),
        OsStr::new("-in"),
        csr.as_os_str(),
        OsStr::new("-CA"),
        ca_cert.as_os_str(),
        OsStr::new("-CAkey"),
        ca_key.as_os_str(),
        OsStr::new("-set_serial"),
        OsStr::new(serial),
        OsStr::new("-days"),
        OsStr::new("1"),
        OsStr::new("-sha256"),
        OsStr::new("-extfile"),
        cnf.as_os_str(),
        OsStr::new("-extensions"),
        OsStr::new(extensions),
        OsStr::new("-out"),
        cert.as_os_str(),
    ]);
}

/// Runs `openssl ARGS` to completion (stdin closed, so it cannot wait for input; at most
/// [`OPENSSL_TIMEOUT`]); panics with its stderr if it fails.
fn openssl<'a>(args: impl IntoIterator<Item = &'a OsStr>) {
    let args: Vec<&OsStr> = args.into_iter().collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = match Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "openssl is not on PATH. The TLS tests need it to make certificates: install it with \
             `apt-get install -y openssl` (Debian/Ubuntu) or `brew install openssl` (macOS), \
             then run the tests again."
        ),
        Err(e) => panic!("could not run `openssl {shown}`: {e}"),
    };
    // Bounded: openssl's stderr is small, so polling cannot deadlock on a full pipe.
    let deadline = Instant::now() + OPENSSL_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`openssl {shown}` did not finish within {OPENSSL_TIMEOUT:?}");
            }
            Err(e) => panic!("wait for `openssl {shown}`: {e}"),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(
        status.success(),
        "`openssl {shown}` failed ({status}):\n{stderr}"
    );
}

fn fresh_dir() -> PathBuf {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fencelock-redis-tls-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the certificates' temporary directory");
    dir
}
