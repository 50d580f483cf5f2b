//! Service configuration: defaults, then `flowcast.toml`, then the environment,
//! then command-line flags. Validated once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::parse_duration;

/// Settings from `flowcast.toml` (every key optional; env wins over the file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    studio_url: Option<String>,
    simulate: Option<bool>,
    rate: Option<u32>,
    concurrency: Option<usize>,
    listen: Option<String>,
    catch_up: Option<String>,
    log: Option<String>,
    request_timeout: Option<String>,
    max_failures: Option<u32>,
    circuit_breaker: Option<u32>,
}

/// The validated service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: PathBuf,
    pub campaigns: PathBuf,
    pub flows: PathBuf,
    pub studio_url: Option<String>,
    pub simulate: bool,
    /// Account-wide creates per second.
    pub rate: u32,
    pub concurrency: usize,
    pub listen: String,
    pub catch_up: Duration,
    pub log: Option<String>,
    pub request_timeout: Duration,
    pub max_failures: u32,
    /// Consecutive transient failures that pause a run; 0: never.
    pub circuit_breaker: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Paths and flags given on the command line (already merged with their env).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub db: Option<PathBuf>,
    pub campaigns: Option<PathBuf>,
    pub flows: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub simulate: bool,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

impl Config {
    /// Loads `flowcast.toml` (from `--config`, else `./flowcast.toml` if present)
    /// and applies the environment and flags.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let (file, file_path) = match &overrides.config {
            Some(path) => (read_file(path)?, Some(path.clone())),
            None if Path::new("flowcast.toml").is_file() => {
                (read_file(Path::new("flowcast.toml"))?, Some(PathBuf::from("flowcast.toml")))
            }
            None => (FileConfig::default(), None),
        };
        let shown = file_path.map(|p| p.display().to_string()).unwrap_or_else(|| "environment".into());
        let number =
            |key: &str, env_value: Option<String>, file_value: Option<u64>, default: u64| -> Result<u64, ConfigError> {
                match env_value {
                    Some(v) => v.trim().parse().map_err(|_| ConfigError(format!("{key}: {v:?} is not a whole number"))),
                    None => Ok(file_value.unwrap_or(default)),
                }
            };
        let duration = |key: &str,
                        env_value: Option<String>,
                        file_value: Option<String>,
                        default: &str|
         -> Result<Duration, ConfigError> {
            let text = env_value.or(file_value).unwrap_or_else(|| default.to_string());
            parse_duration(&text).map_err(|e| ConfigError(format!("{shown}: {key}: {e}")))
        };
        let rate = number("FLOWCAST_RATE", env("FLOWCAST_RATE"), file.rate.map(u64::from), 10)?;
        if !(1..=10_000).contains(&rate) {
            return Err(ConfigError(format!("rate {rate} must be 1 to 10000 executions per second")));
        }
        let concurrency =
            number("FLOWCAST_CONCURRENCY", env("FLOWCAST_CONCURRENCY"), file.concurrency.map(|c| c as u64), 16)?;
        if !(1..=1024).contains(&concurrency) {
            return Err(ConfigError(format!("concurrency {concurrency} must be 1 to 1024")));
        }
        let simulate_env = env("FLOWCAST_SIMULATE").is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        Ok(Config {
            db: overrides.db.clone().unwrap_or_else(|| PathBuf::from("flowcast.db")),
            campaigns: overrides.campaigns.clone().unwrap_or_else(|| PathBuf::from("campaigns")),
            flows: overrides.flows.clone().unwrap_or_else(|| PathBuf::from("flows")),
            studio_url: env("FLOWCAST_STUDIO_URL").or(file.studio_url),
            simulate: overrides.simulate || simulate_env || file.simulate.unwrap_or(false),
            rate: rate as u32,
            concurrency: concurrency as usize,
            listen: env("FLOWCAST_LISTEN").or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into()),
            catch_up: duration("catch_up", env("FLOWCAST_CATCH_UP"), file.catch_up, "1h")?,
            log: env("FLOWCAST_LOG").or(file.log),
            request_timeout: duration("request_timeout", env("FLOWCAST_REQUEST_TIMEOUT"), file.request_timeout, "15s")?,
            max_failures: number(
                "FLOWCAST_MAX_FAILURES",
                env("FLOWCAST_MAX_FAILURES"),
                file.max_failures.map(u64::from),
                5,
            )? as u32,
            circuit_breaker: number(
                "FLOWCAST_CIRCUIT_BREAKER",
                env("FLOWCAST_CIRCUIT_BREAKER"),
                file.circuit_breaker.map(u64::from),
                20,
            )? as u32,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        ConfigError(format!("{}:{line}: {}", path.display(), e.message().trim()))
    })
}
