//! TLS for the quorum's own sockets (feature `tls`): a rustls client configuration made from the
//! same certificates redis-rs takes ([`redis::TlsCertificates`]: a private CA, a client
//! certificate for mutual TLS), or from the system's roots when there are none. One server and
//! the async API speak TLS through redis-rs itself.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, InvalidInput};

/// What a quorum's socket to one server needs for TLS: the configuration and the name (or IP
/// address) its certificate must carry.
#[derive(Clone, Debug)]
pub(crate) struct Tls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server: ServerName<'static>,
}

impl Tls {
    /// TLS to `host`, trusting `certs.root_cert` (else the system's roots), presenting
    /// `certs.client_tls` if given.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for certificates or a key that do not parse, no usable root, or a
    /// host that is no DNS name or IP address.
    pub(crate) fn new(host: &str, certs: Option<&redis::TlsCertificates>) -> Result<Self, Error> {
        let invalid = |what: String| Error::InvalidInput(InvalidInput::new(what));
        let mut roots = RootCertStore::empty();
        match certs.and_then(|c| c.root_cert.as_deref()) {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| invalid(format!("the root certificate: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| invalid(format!("the root certificate: {e}")))?;
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        if roots.is_empty() {
            return Err(invalid(
                "no root certificate to verify the servers with: pass one in \
                 TlsCertificates::root_cert, or install the system's (ca-certificates)"
                    .to_owned(),
            ));
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match certs.and_then(|c| c.client_tls.as_ref()) {
            Some(client) => {
                let chain = CertificateDer::pem_slice_iter(&client.client_cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(format!("the client certificate: {e}")))?;
                let key = PrivateKeyDer::from_pem_slice(&client.client_key)
                    .map_err(|e| invalid(format!("the client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| invalid(format!("the client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        let server = ServerName::try_from(host.to_owned())
            .map_err(|e| invalid(format!("the server name {host:?}: {e}")))?;
        Ok(Self {
            config: Arc::new(config),
            server,
        })
    }
}
