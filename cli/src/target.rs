//! Where the lock lives — one server or a quorum, and the TLS files to reach it with — and what
//! its errors mean to a script.

use std::fmt;
use std::path::{Path, PathBuf};

use fencelock_redis::redis::{self, ClientTlsConfig, TlsCertificates};
use fencelock_redis::{Error, LockServer};

use crate::exit::{self, Failure};

/// The lock server when neither `--redis`, `--quorum` nor `$FENCELOCK_REDIS` names one.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Where the lock lives, and the TLS files to reach it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub servers: Servers,
    pub tls: TlsFiles,
}

/// One lock server, or a quorum of independent ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Servers {
    One(String),
    Quorum(Vec<String>),
}

/// PEM files for `rediss://` URLs: a CA instead of the system's roots, a client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    /// A certificate and its key (clap requires both or neither).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Servers {
    /// `--quorum`, else `--redis`, else `$FENCELOCK_REDIS` (if not empty), else [`DEFAULT_URL`].
    pub fn resolve(
        redis: Option<String>,
        quorum: Option<Vec<String>>,
        env: Option<String>,
    ) -> Self {
        match (quorum, redis, env) {
            (Some(urls), _, _) => Self::Quorum(urls),
            (None, Some(url), _) => Self::One(url),
            (None, None, Some(url)) if !url.is_empty() => Self::One(url),
            _ => Self::One(DEFAULT_URL.to_owned()),
        }
    }
}

impl TlsFiles {
    /// The files' contents, if any was named.
    fn read(&self) -> Result<Option<TlsCertificates>, Failure> {
        if self.ca.is_none() && self.client.is_none() {
            return Ok(None);
        }
        let root_cert = self
            .ca
            .as_deref()
            .map(|ca| read("--tls-ca", ca))
            .transpose()?;
        let client_tls = match &self.client {
            Some((cert, key)) => Some(ClientTlsConfig {
                client_cert: read("--tls-cert", cert)?,
                client_key: read("--tls-key", key)?,
            }),
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn read(option: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        let message = format!("cannot read {option} {}: {e}", path.display());
        Failure::new(exit::USAGE, message)
    })
}

impl Target {
    /// A handle to the server(s), with the library's default timeouts (1 s to connect, 1 s per
    /// reply). Opens no connection.
    ///
    /// # Errors
    /// A usage [`Failure`] for a URL that does not parse, a quorum of an even size, or a TLS
    /// file that cannot be read.
    pub fn open(&self) -> Result<LockServer, Failure> {
        let mut builder = LockServer::builder();
        if let Some(certificates) = self.tls.read()? {
            builder = builder.tls_certificates(certificates);
        }
        let opened = match &self.servers {
            Servers::One(url) => builder.open(url),
            Servers::Quorum(urls) => {
                let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
                builder.quorum(&urls)
            }
        };
        opened.map_err(|e| match e {
            Error::InvalidInput(invalid) => Failure::new(exit::USAGE, invalid.to_string()),
            e => Failure::new(
                exit::USAGE,
                format!("not a lock server URL: {self}: {}", cause(&e)),
            ),
        })
    }

    /// What a library error means here: bad input (a URL the client cannot use included) is
    /// usage (64); a server that cannot be reached, or refuses, is unavailable (69). Leases lost
    /// are handled where they happen.
    pub fn failure(&self, e: Error) -> Failure {
        match e {
            Error::InvalidInput(invalid) => Failure::new(exit::USAGE, invalid.to_string()),
            Error::Redis(e) if e.kind() == redis::ErrorKind::InvalidClientConfig => {
                Failure::new(exit::USAGE, format!("cannot use {self}: {e}"))
            }
            e if e.is_unavailable() => {
                let at = match self.servers {
                    Servers::One(_) => format!("the lock server at {self}"),
                    Servers::Quorum(_) => format!("a majority of the lock servers {self}"),
                };
                Failure::new(
                    exit::UNAVAILABLE,
                    format!("cannot reach {at}: {}", cause(&e)),
                )
            }
            e => Failure::new(
                exit::UNAVAILABLE,
                format!("the lock server at {self} refused: {}", cause(&e)),
            ),
        }
    }
}

/// The underlying cause: the Redis error itself, without the library's advice around it.
fn cause(e: &Error) -> String {
    match e {
        Error::Redis(redis) => redis.to_string(),
        e => e.to_string(),
    }
}

/// The URLs, comma-separated, each with its password (if any) replaced by `***`: stderr ends up
/// in logs.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: &[String] = match &self.servers {
            Servers::One(url) => std::slice::from_ref(url),
            Servers::Quorum(urls) => urls,
        };
        for (i, url) in urls.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&redact(url))?;
        }
        Ok(())
    }
}

/// `scheme://user:password@host…` → `scheme://user:***@host…`; other URLs unchanged.
fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!("{}***{}", &url[..start + colon + 1], &url[start + at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://app:s3cret@127.0.0.1:6379/0"),
            "redis://app:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact("rediss://:pw@host:6380"), "rediss://:***@host:6380");
        assert_eq!(redact("redis://a:b@c@host"), "redis://a:***@host");
        assert_eq!(redact("redis://user@host"), "redis://user@host");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://host/0?x=a:b@c"), "redis://host/0?x=a:b@c");
        assert_eq!(redact("not a url"), "not a url");
        let quorum = Target {
            servers: Servers::Quorum(vec!["redis://a:b@h1".into(), "redis://h2".into()]),
            tls: TlsFiles::default(),
        };
        assert_eq!(quorum.to_string(), "redis://a:***@h1,redis://h2");
    }

    #[test]
    fn quorum_then_redis_then_environment_then_default() {
        let one = |url: &str| Servers::One(url.to_owned());
        let quorum = Some(vec!["redis://q".to_owned()]);
        let redis = Some("redis://r".to_owned());
        let env = Some("redis://e".to_owned());
        assert_eq!(
            Servers::resolve(redis.clone(), quorum.clone(), env.clone()),
            Servers::Quorum(vec!["redis://q".into()])
        );
        assert_eq!(Servers::resolve(redis, None, env.clone()), one("redis://r"));
        assert_eq!(Servers::resolve(None, None, env), one("redis://e"));
        let empty = Some(String::new());
        assert_eq!(Servers::resolve(None, None, empty), one(DEFAULT_URL));
        assert_eq!(Servers::resolve(None, None, None), one(DEFAULT_URL));
    }
}
