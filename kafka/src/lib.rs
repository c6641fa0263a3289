//! The one place that configures a Kafka client of stockflow: the sources (`ingest`), the
//! dead-letter producer (`sinks`) and `stockflow produce` all start from [`client_config`], so
//! that brokers, TLS and SASL are set once.

use rdkafka::config::ClientConfig;
use stockflow_types::config::KafkaConfig;

/// The base configuration of every Kafka client stockflow creates: brokers, client id, TLS and
/// SASL, and the user's extra `kafka.options` (which may not touch what stockflow owns; see
/// `stockflow_types::config::RESERVED_KAFKA_OPTIONS` and `SECURITY_KAFKA_OPTIONS`).
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers)
        .set("client.id", "stockflow")
        .set("security.protocol", k.security_protocol.as_librdkafka());
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    if k.security_protocol.tls() {
        if let Some(ca) = &k.tls.ca_file {
            c.set("ssl.ca.location", path(ca));
        }
        if let (Some(cert), Some(key)) = (&k.tls.cert_file, &k.tls.key_file) {
            c.set("ssl.certificate.location", path(cert))
                .set("ssl.key.location", path(key));
        }
        if !k.tls.key_password.is_empty() {
            c.set("ssl.key.password", k.tls.key_password.expose());
        }
    }
    if k.security_protocol.sasl() {
        c.set("sasl.mechanism", k.sasl.mechanism.as_librdkafka())
            .set("sasl.username", &k.sasl.username)
            .set("sasl.password", k.sasl.password.expose());
    }
    for (key, value) in &k.options {
        c.set(key, value);
    }
    c
}
