//! Service configuration: defaults, then `flowcast.toml`, then the environment,
//! then command-line flags. Validated once at start; every environment
//! variable flowcast reads is read here, and secrets are wrapped so that they
//! never print.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{ContactLimits, NotifyRule, parse_duration};
use crate::store::Ledger;

/// Settings from `flowcast.toml` (every key optional; env wins over the file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    contact_limits: Option<FileContactLimits>,
    notify: Option<FileNotify>,
    notify_retry: Option<String>,
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
    outcome_after: Option<String>,
    outcome_timeout: Option<String>,
    read_rate: Option<u32>,
    retention: Option<String>,
}

/// `[contact_limits]` in `flowcast.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContactLimits {
    max_per_day: Option<u32>,
    max_per_week: Option<u32>,
    min_gap: Option<String>,
}

/// `[notify]` in `flowcast.toml`: events of every campaign without its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNotify {
    url: String,
    events: Option<Vec<String>>,
}

/// A value that must never reach logs, errors or reports.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (a signature, a
    /// header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Twilio credentials from the environment.
#[derive(Debug, Clone, Default)]
pub struct TwilioEnv {
    pub account_sid: Option<String>,
    pub auth_token: Option<Secret>,
    pub api_key: Option<String>,
    pub api_secret: Option<Secret>,
    pub region: Option<String>,
    pub edge: Option<String>,
}

impl TwilioEnv {
    /// The Basic-auth pair to use: an API key when one is set (Twilio's
    /// advice), else the account SID and auth token.
    pub fn basic_auth(&self) -> Option<(String, Secret)> {
        match (&self.api_key, &self.api_secret, &self.account_sid, &self.auth_token) {
            (Some(key), Some(secret), _, _) => Some((key.clone(), secret.clone())),
            (_, _, Some(sid), Some(token)) => Some((sid.clone(), token.clone())),
            _ => None,
        }
    }
}

/// The validated service configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: Ledger,
    pub campaigns: PathBuf,
    /// The flows folder: as given, else [`default_flows`] of the campaigns folder.
    pub flows: PathBuf,
    /// Whether `flows` was given (`--flows`, `FLOWCAST_FLOWS`) rather than derived.
    flows_given: bool,
    pub studio_url: Option<String>,
    pub simulate: bool,
    /// Account-wide creates per second.
    pub rate: u32,
    pub concurrency: usize,
    /// `host:port` for `serve`; the host may be a name (`localhost:8080`),
    /// resolved when `serve` starts.
    pub listen: String,
    pub catch_up: Duration,
    /// The tracing filter: `FLOWCAST_LOG`, the file's `log`, then `RUST_LOG`.
    pub log: Option<String>,
    /// `FLOWCAST_LOG_FORMAT=json`: log JSON lines.
    pub log_json: bool,
    pub request_timeout: Duration,
    pub max_failures: u32,
    /// Consecutive transient failures that pause a run; 0: never.
    pub circuit_breaker: u32,
    /// First read of an Execution's outcome, this long after its create.
    pub outcome_after: Duration,
    /// Give up reading an Execution still running this long after its create.
    pub outcome_timeout: Duration,
    /// Studio reads per second, apart from creates.
    pub read_rate: u32,
    /// Purge the personal data of runs over longer ago than this
    /// (`retention`, `FLOWCAST_RETENTION`); `None` (`keep`, the default): never.
    pub retention: Option<Duration>,
    pub twilio: TwilioEnv,
    /// `FLOWCAST_ADMIN_TOKEN`: guards the HTTP API.
    pub admin_token: Option<Secret>,
    /// `FLOWCAST_PUBLIC_URL`: the base URL Twilio posts webhooks to.
    pub public_url: Option<String>,
    /// Per-phone caps across campaigns (`[contact_limits]`, `FLOWCAST_MAX_PER_DAY`,
    /// `FLOWCAST_MAX_PER_WEEK`, `FLOWCAST_MIN_GAP`).
    pub contact_limits: ContactLimits,
    /// `[notify]`: where events of campaigns without their own `notify` go.
    pub notify: Option<NotifyRule>,
    /// `FLOWCAST_NOTIFY_SECRET`: the key events are signed with.
    pub notify_secret: Option<Secret>,
    /// `FLOWCAST_NOTIFY_RETRY` / `notify_retry`: the first retry delay of an
    /// undelivered event (doubling up to an hour, jittered), default `1s`.
    pub notify_retry: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Paths and flags given on the command line (already merged with their env).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub db: Option<String>,
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
        let read_rate = number("FLOWCAST_READ_RATE", env("FLOWCAST_READ_RATE"), file.read_rate.map(u64::from), 20)?;
        if !(1..=10_000).contains(&read_rate) {
            return Err(ConfigError(format!("read_rate {read_rate} must be 1 to 10000 reads per second")));
        }
        let concurrency =
            number("FLOWCAST_CONCURRENCY", env("FLOWCAST_CONCURRENCY"), file.concurrency.map(|c| c as u64), 16)?;
        if !(1..=1024).contains(&concurrency) {
            return Err(ConfigError(format!("concurrency {concurrency} must be 1 to 1024")));
        }
        let db = Ledger::parse(overrides.db.as_deref().unwrap_or("flowcast.db"))
            .map_err(|e| ConfigError(format!("--db / FLOWCAST_DB: {e}")))?;
        let file_limits = file.contact_limits.unwrap_or_default();
        let cap = |key: &str, file_value: Option<u32>| -> Result<Option<u32>, ConfigError> {
            match env(key) {
                Some(v) => {
                    v.trim().parse().map(Some).map_err(|_| ConfigError(format!("{key}: {v:?} is not a whole number")))
                }
                None => Ok(file_value),
            }
        };
        let contact_limits = ContactLimits {
            max_per_day: cap("FLOWCAST_MAX_PER_DAY", file_limits.max_per_day)?,
            max_per_week: cap("FLOWCAST_MAX_PER_WEEK", file_limits.max_per_week)?,
            min_gap: match env("FLOWCAST_MIN_GAP").or(file_limits.min_gap) {
                Some(text) => Some(
                    parse_duration(&text).map_err(|e| ConfigError(format!("{shown}: contact_limits.min_gap: {e}")))?,
                ),
                None => None,
            },
        };
        let notify = match &file.notify {
            Some(n) => {
                Some(NotifyRule::parse(&n.url, n.events.as_deref()).map_err(|e| ConfigError(format!("{shown}: {e}")))?)
            }
            None => None,
        };
        let simulate_env = env("FLOWCAST_SIMULATE").is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        let config = Config {
            db,
            campaigns: overrides.campaigns.clone().unwrap_or_else(|| PathBuf::from("campaigns")),
            flows: overrides.flows.clone().unwrap_or_else(|| default_flows(overrides.campaigns.as_deref())),
            flows_given: overrides.flows.is_some(),
            studio_url: env("FLOWCAST_STUDIO_URL").or(file.studio_url),
            simulate: overrides.simulate || simulate_env || file.simulate.unwrap_or(false),
            rate: rate as u32,
            concurrency: concurrency as usize,
            listen: env("FLOWCAST_LISTEN").or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into()),
            catch_up: duration("catch_up", env("FLOWCAST_CATCH_UP"), file.catch_up, "1h")?,
            log: env("FLOWCAST_LOG").or(file.log).or_else(|| env("RUST_LOG")),
            log_json: env("FLOWCAST_LOG_FORMAT").is_some_and(|f| f.trim() == "json"),
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
            outcome_after: duration("outcome_after", env("FLOWCAST_OUTCOME_AFTER"), file.outcome_after, "5m")?,
            outcome_timeout: duration("outcome_timeout", env("FLOWCAST_OUTCOME_TIMEOUT"), file.outcome_timeout, "7d")?,
            read_rate: read_rate as u32,
            retention: match (env("FLOWCAST_RETENTION"), file.retention) {
                (Some(text), _) => crate::domain::parse_retention(&text)
                    .map_err(|e| ConfigError(format!("FLOWCAST_RETENTION: {e}")))?,
                (None, Some(text)) => crate::domain::parse_retention(&text)
                    .map_err(|e| ConfigError(format!("{shown}: retention: {e}")))?,
                (None, None) => None,
            },
            twilio: TwilioEnv {
                account_sid: env("TWILIO_ACCOUNT_SID"),
                auth_token: env("TWILIO_AUTH_TOKEN").map(Secret),
                api_key: env("TWILIO_API_KEY"),
                api_secret: env("TWILIO_API_SECRET").map(Secret),
                region: env("TWILIO_REGION"),
                edge: env("TWILIO_EDGE"),
            },
            admin_token: env("FLOWCAST_ADMIN_TOKEN").map(Secret),
            public_url: env("FLOWCAST_PUBLIC_URL"),
            contact_limits,
            notify,
            notify_secret: env("FLOWCAST_NOTIFY_SECRET").map(Secret),
            notify_retry: duration("notify_retry", env("FLOWCAST_NOTIFY_RETRY"), file.notify_retry, "1s")?,
        };
        // A purged job's phone is a hash, so the caps no longer see it: a
        // retention shorter than the caps' window would let a contact through.
        if let Some(retention) = config.retention
            && i64::try_from(retention.as_millis()).unwrap_or(i64::MAX) < config.contact_limits.horizon_ms()
        {
            return Err(ConfigError(format!(
                "retention {} is shorter than the contact limits' window ({}); keep personal data at least that long",
                crate::domain::format_duration(retention),
                crate::domain::format_duration(Duration::from_millis(config.contact_limits.horizon_ms() as u64))
            )));
        }
        Ok(config)
    }

    /// The flows folder for campaign files in `campaigns`: the one given, else
    /// the default for that folder.
    pub fn flows_for(&self, campaigns: &Path) -> PathBuf {
        if self.flows_given { self.flows.clone() } else { default_flows(Some(campaigns)) }
    }

    /// The process environment, for the `${VAR}` placeholders of flow
    /// definitions (which may name any variable the deployer sets).
    pub fn flow_variables(&self) -> HashMap<String, String> {
        std::env::vars().collect()
    }
}

/// The flows folder when none is given: `flows` beside the campaigns folder
/// (`<campaigns>/../flows`) when a campaigns folder is given and that folder
/// exists, so `--campaigns some/dir` finds `some/flows` from any working
/// directory; else `./flows`.
pub fn default_flows(campaigns: Option<&Path>) -> PathBuf {
    campaigns.map(sibling_flows).filter(|flows| flows.is_dir()).unwrap_or_else(|| PathBuf::from("flows"))
}

/// `<campaigns>/../flows`, written without `..` when the folder's name is
/// known (`some/dir` gives `some/flows`), since paths appear in messages.
fn sibling_flows(campaigns: &Path) -> PathBuf {
    match campaigns.components().next_back() {
        Some(std::path::Component::Normal(_)) => campaigns.parent().unwrap_or(Path::new("")).join("flows"),
        _ => campaigns.join("..").join("flows"),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
        ConfigError(format!("{}:{line}: {}", path.display(), e.message().trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_limits_are_read_from_the_file_and_a_bad_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("flowcast.toml");
        std::fs::write(&file, "rate = 5\n[contact_limits]\nmax_per_day = 1\nmin_gap = \"4h\"\n").unwrap();
        let config = Config::load(&Overrides { config: Some(file.clone()), ..Default::default() }).unwrap();
        assert_eq!(
            config.contact_limits,
            ContactLimits { max_per_day: Some(1), max_per_week: None, min_gap: Some(Duration::from_secs(4 * 3600)) }
        );
        std::fs::write(&file, "[contact_limits]\nmin_gap = \"soon\"\n").unwrap();
        let err = Config::load(&Overrides { config: Some(file.clone()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("flowcast.toml: contact_limits.min_gap:"), "{err}");
        std::fs::write(&file, "[contact_limits]\nmax_per_month = 3\n").unwrap();
        let err = Config::load(&Overrides { config: Some(file), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("flowcast.toml:2: unknown field `max_per_month`"), "{err}");
    }

    #[test]
    fn the_flows_folder_defaults_to_the_campaigns_folders_sibling_when_it_exists() {
        let tmp = tempfile::tempdir().unwrap();
        let campaigns = tmp.path().join("campaigns");
        std::fs::create_dir(&campaigns).unwrap();
        assert_eq!(default_flows(Some(&campaigns)), PathBuf::from("flows"), "no sibling: ./flows");
        std::fs::create_dir(tmp.path().join("flows")).unwrap();
        assert_eq!(default_flows(Some(&campaigns)), tmp.path().join("flows"));
        assert_eq!(default_flows(None), PathBuf::from("flows"));
    }
}
