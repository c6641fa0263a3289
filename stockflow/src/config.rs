//! Loading the configuration: defaults, then the TOML file (the embedded `configs/local.toml`
//! unless `--config` names another), then `STOCKFLOW_<SECTION>__<FIELD>` environment variables,
//! then `--set section.field=value` and the flag shortcuts. Unknown keys anywhere are an error.

use anyhow::{bail, Context, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use std::path::Path;
use stockflow_types::config::Settings;

/// The embedded default configuration.
pub const LOCAL_TOML: &str = include_str!("../../configs/local.toml");

/// Builds the settings from every layer and validates them.
pub fn load(file: Option<&Path>, sets: &[String]) -> Result<Settings> {
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    fig = match file {
        Some(path) => {
            if !path.exists() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig.merge(Toml::file(path))
        }
        None => fig.merge(Toml::string(LOCAL_TOML)),
    };
    // Only SECTION__FIELD names: the scripts' own variables (STOCKFLOW_KAFKA_PORT, say) are not
    // configuration, while a misspelt section or field still fails below.
    fig = fig.merge(
        Env::prefixed("STOCKFLOW_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    );
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .with_context(|| format!("--set {set:?}: expected section.field=value"))?;
        // A TOML value if it parses as one (numbers, booleans, arrays, quoted strings), else a string.
        let doc = format!("{key} = {value}");
        let layer = if toml_value_ok(&doc) {
            doc
        } else {
            format!("{key} = {}", toml_quote(value))
        };
        fig = fig.merge(Toml::string(&layer));
    }
    let mut settings: Settings = fig.extract().context("reading the configuration")?;
    read_files(&mut settings)?;
    settings.validate()?;
    Ok(settings)
}

/// Checks that every file the settings name can be read, and reads the secrets given as files
/// (`*.password_file`: the content without a trailing newline) into their fields.
fn read_files(settings: &mut Settings) -> Result<()> {
    let (named, secrets) = settings.files();
    for (field, path) in named {
        std::fs::File::open(&path)
            .with_context(|| format!("{field}: {} cannot be read", path.display()))?;
    }
    for (field, file, secret) in secrets {
        let Some(path) = file else { continue };
        if !secret.is_empty() {
            bail!("{field}: set either the password or the file, not both");
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{field}: {} cannot be read", path.display()))?;
        let value = text.strip_suffix('\n').unwrap_or(&text);
        let value = value.strip_suffix('\r').unwrap_or(value);
        if value.is_empty() {
            bail!("{field}: {} is empty", path.display());
        }
        *secret = value.into();
    }
    Ok(())
}

fn toml_value_ok(doc: &str) -> bool {
    Figment::from(Toml::string(doc))
        .extract::<figment::value::Dict>()
        .is_ok()
}

fn toml_quote(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_documented_default() {
        let s = load(None, &[]).unwrap();
        assert_eq!(
            s,
            Settings::default(),
            "configs/local.toml and the code's defaults disagree"
        );
    }

    #[test]
    fn script_variables_are_not_configuration() {
        // Set by scripts/services.sh users; a SECTION__FIELD variable is what configures.
        std::env::set_var("STOCKFLOW_SERVICES_DIR", "/var/tmp/elsewhere");
        assert!(load(None, &[]).is_ok());
    }

    #[test]
    fn shipped_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let kafka = load(Some(&dir.join("kafka.toml")), &[]).unwrap();
        assert_eq!(
            kafka.source.kind,
            stockflow_types::config::SourceKind::Kafka
        );
        assert!(kafka.clickhouse.enabled);
        // Everything but the source and the sink as the embedded default.
        let mut same = kafka;
        same.source = Settings::default().source;
        same.clickhouse.enabled = false;
        same.checkpoint.enabled = false;
        assert_eq!(
            same,
            Settings::default(),
            "configs/kafka.toml drifted from local.toml"
        );
        let docker = load(Some(&dir.join("docker.toml")), &[]).unwrap();
        assert_eq!(docker.kafka.brokers, "kafka:9092");
        assert_eq!(docker.clickhouse.url, "http://clickhouse:8123");
        load(Some(&dir.join("bench.toml")), &[]).unwrap();
        let err = format!(
            "{:#}",
            load(
                Some(&dir.join("kafka.toml")),
                &["kafka.options.\"group.id\"=x".into()]
            )
            .unwrap_err()
        );
        assert!(err.contains("is set by stockflow"), "{err}");
    }

    #[test]
    fn named_files_must_be_readable() {
        let err = format!(
            "{:#}",
            load(
                None,
                &[
                    "kafka.security_protocol=ssl".into(),
                    "kafka.tls.ca_file=/nonexistent/ca.pem".into()
                ]
            )
            .unwrap_err()
        );
        assert!(err.contains("kafka.tls.ca_file"), "{err}");
    }

    #[test]
    fn sets_override_and_unknown_keys_fail() {
        let s = load(
            None,
            &[
                "pipeline.workers=2".into(),
                "http.listen=127.0.0.1:9".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.pipeline.workers, 2);
        assert_eq!(s.http.listen, "127.0.0.1:9");
        let err = format!(
            "{:#}",
            load(None, &["pipeline.wrokers=2".into()]).unwrap_err()
        );
        assert!(err.contains("wrokers"), "{err}");
        let err = format!(
            "{:#}",
            load(None, &["pipeline.workers=0".into()]).unwrap_err()
        );
        assert!(err.contains("pipeline.workers"), "{err}");
    }
}
