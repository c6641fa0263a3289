//! The HTTP client of the sink: plain HTTP, or HTTPS with rustls, trusting the system's roots
//! and, when `clickhouse.ca_file` names one, a private CA.

use clickhouse::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use stockflow_types::config::ClickHouseConfig;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file is not PEM certificates.
    #[error("clickhouse.ca_file {path}: {problem}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The server's client, without a database, with the configured user and password.
pub fn client(cfg: &ClickHouseConfig) -> Result<Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots; a machine without any still reaches a server of the private CA.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = &cfg.ca_file {
        let bad = |problem: String| ClientError::CaFile {
            path: path.display().to_string(),
            problem,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        for cert in certs {
            roots.add(cert)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(Duration::from_secs(60)));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // ClickHouse closes idle connections after 3 s (its keep_alive_timeout): give up on
    // them sooner, as the crate's own client does.
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector);
    Ok(Client::with_http_client(http)
        .with_url(&cfg.url)
        .with_user(&cfg.user)
        .with_password(cfg.password.expose())
        .with_validation(false))
}
