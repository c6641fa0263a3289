//! `stockflow`: the thin binary that wires sources, the dataflow, HTTP and the sinks.

mod config;
mod forecast_fit;
mod healthcheck;
mod produce;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc: the ledger allocates and frees small strings and rows for every event, and glibc's
/// malloc took ~13% of the engine's time in profiles (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exact, real-time inventory: stock, reservations and sales analytics over HTTP.
#[derive(Debug, Parser)]
#[command(name = "stockflow", version)]
struct Cli {
    /// TOML configuration (default: the embedded configs/local.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override any field: `--set section.field=value` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline and serve HTTP (the default).
    Run(RunArgs),
    /// Write the generator's workload (rate and limit from the `generator` section) or a
    /// JSON-lines file into the Kafka topics, then exit.
    Produce(ProduceArgs),
    /// Print the effective configuration.
    Config,
    /// Print the OpenAPI document.
    Openapi,
    /// Print the JSON Schema of the events producers send (docs/events.md).
    Schema,
    /// Forecasting's offline commands.
    #[command(subcommand)]
    Forecast(ForecastCommand),
    /// Exit 0 if a running stockflow is ready (`/readyz` answers 200), else 1: for container
    /// health checks.
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Subcommand)]
enum ForecastCommand {
    /// Fit a model file (TOML, for `forecast.model_file`) on a JSON-lines log: the group priors
    /// (location × category rate, weekday profile, strength) by empirical Bayes.
    Fit {
        /// The log: JSON-lines events (`-` for stdin), e.g. a replay of the topics.
        #[arg(long, value_name = "PATH")]
        input_file: PathBuf,
        /// Fit on the buckets before this time (RFC 3339 or epoch ms).
        #[arg(long, value_name = "TIME")]
        until: String,
        /// The model file's version, carried by every forecast made with it.
        #[arg(long, value_name = "VERSION")]
        version: String,
        /// Where to write it.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct HealthcheckArgs {
    /// Ask this address instead of `http.listen`, e.g. http://127.0.0.1:8080/readyz.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

#[derive(Debug, Default, clap::Args)]
struct RunArgs {
    /// Read JSON-lines events from PATH (`-` for stdin) instead of the generator.
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,
    /// Listen address of the HTTP server, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Timely worker threads.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct ProduceArgs {
    /// Records per second (0 = as fast as the broker takes them).
    #[arg(long, value_name = "N")]
    rate: Option<u64>,
    /// Stop after N records (0 = never).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Produce the JSON lines of PATH (`-` for stdin) instead of the generator's workload.
    #[arg(long, value_name = "PATH")]
    input_file: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        None => RunArgs::default(),
        Some(Command::Run(args)) => args,
        Some(Command::Healthcheck(h)) => {
            let s = config::load(cli.config.as_deref(), &cli.sets)?;
            return healthcheck::check(&s.http.listen, h.url.as_deref());
        }
        Some(Command::Forecast(ForecastCommand::Fit {
            input_file,
            until,
            version,
            out,
        })) => {
            let s = config::load(cli.config.as_deref(), &cli.sets)?;
            return forecast_fit::run(&s, &input_file, &until, &version, &out);
        }
        Some(Command::Schema) => {
            let schema = stockflow_types::schema::event_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
            return Ok(());
        }
        Some(Command::Openapi) => {
            use utoipa::OpenApi;
            println!(
                "{}",
                stockflow_serve::api::ApiDoc::openapi().to_pretty_json()?
            );
            return Ok(());
        }
        Some(Command::Produce(p)) => {
            let mut sets = cli.sets;
            sets.extend(p.rate.map(|r| format!("generator.rate={r}")));
            sets.extend(p.limit.map(|l| format!("generator.limit={l}")));
            let s = config::load(cli.config.as_deref(), &sets)?;
            return produce::produce(&s, p.input_file.as_deref());
        }
        Some(Command::Config) => {
            let s = config::load(cli.config.as_deref(), &cli.sets)?;
            println!("{}", serde_json::to_string_pretty(&s.redacted())?);
            return Ok(());
        }
    };
    let mut sets = cli.sets;
    if let Some(path) = &args.input_file {
        sets.push("source.kind=file".into());
        sets.push(format!("source.input_file={}", path.display()));
    }
    if let Some(addr) = &args.http {
        sets.push(format!("http.listen={addr}"));
    }
    if let Some(n) = args.workers {
        sets.push(format!("pipeline.workers={n}"));
    }
    let settings = config::load(cli.config.as_deref(), &sets)?;
    run::run(settings)
}
