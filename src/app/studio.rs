//! Which Studio the commands talk to: the in-process simulator, or Twilio (or
//! `FLOWCAST_STUDIO_URL`) with the configured credentials; and the dispatcher
//! and flow resolver built over it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::{CommandResult, Failure};
use crate::config::Config;
use crate::dispatch::{DispatchSettings, Dispatcher, RateLimits};
use crate::domain::parse_duration;
use crate::flows::LockFileResolver;
use crate::schedule::SystemClock;
use crate::store::Store;
use crate::studio::simulator::{SimConfig, Simulator, read_replies};
use crate::studio::{Credentials, HttpStudio, StudioConfig, base_url};

/// The account the simulator answers for; the example lock file maps flows
/// for it.
const SIMULATOR_ACCOUNT: &str = "AC00000000000000000000000000000000";

/// Studio as configured, with the account it acts for.
pub(super) struct StudioHandle {
    pub client: HttpStudio,
    pub account_sid: String,
    _simulator: Option<Simulator>,
}

pub(super) async fn connect_studio(config: &Config) -> Result<StudioHandle, Failure> {
    let (base, credentials, account_sid, simulator) = if config.simulate {
        let sim = Simulator::start(SimConfig::default())
            .await
            .context("starting the Studio simulator")
            .map_err(Failure::studio)?;
        tracing::info!(url = %sim.url(), "using the built-in Studio simulator");
        install_flows(config, &sim);
        (sim.url(), Credentials::new(SIMULATOR_ACCOUNT, "simulator"), SIMULATOR_ACCOUNT.to_string(), Some(sim))
    } else {
        let (username, secret) = config.twilio.basic_auth().ok_or_else(|| {
            Failure::studio(anyhow!(
                "no Twilio credentials: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET), or use --simulate"
            ))
        })?;
        let base =
            base_url(config.studio_url.as_deref(), config.twilio.edge.as_deref(), config.twilio.region.as_deref());
        // Flow names resolve per account; with an API key the account is the
        // one named by TWILIO_ACCOUNT_SID.
        let account = config.twilio.account_sid.clone().unwrap_or_else(|| username.clone());
        (base, Credentials::new(username, secret.expose()), account, None)
    };
    let client = HttpStudio::new(StudioConfig {
        base_url: base,
        credentials,
        timeout: config.request_timeout,
        connect_timeout: Duration::from_secs(5),
    })
    .context("building the HTTP client")
    .map_err(Failure::studio)?;
    Ok(StudioHandle { client, account_sid, _simulator: simulator })
}

/// Gives the in-process simulator the definitions of the flows the lock file
/// maps for its account, so that `--simulate` runs them: replies, branches,
/// variables, an end, and outcomes to read back. `${VAR}`s come from the
/// environment, else from `flows/example.env` when there is one; a flow that
/// cannot be read is left out (its Executions just stay active), with a
/// warning.
fn install_flows(config: &Config, sim: &Simulator) {
    let Ok(lock) = crate::flows::Lock::read(&config.flows) else { return };
    let Some(entries) = lock.0.get(SIMULATOR_ACCOUNT) else { return };
    let example = config.flows.join("example.env");
    let env_file = example.is_file().then_some(example.as_path());
    let vars = match crate::flows::variables(config.flow_variables(), env_file) {
        Ok(vars) => vars,
        Err(e) => {
            tracing::warn!(error = %e, "the simulator runs no flow definitions");
            return;
        }
    };
    for (name, deployed) in entries {
        match crate::flows::load(&config.flows, name, &vars) {
            Ok(definition) => sim.install_flow(&deployed.sid, name, definition.value),
            Err(e) => tracing::warn!(flow = %name, error = %e, "the simulator does not run this flow"),
        }
    }
}

/// Resolves campaigns' flow names through the lock file, for this account.
pub(super) fn resolver(config: &Config, studio: &StudioHandle) -> LockFileResolver {
    LockFileResolver { flows: config.flows.clone(), account_sid: studio.account_sid.clone() }
}

pub(super) fn dispatcher(config: &Config, store: &Store, studio: &StudioHandle) -> Dispatcher<HttpStudio> {
    let settings = DispatchSettings {
        concurrency: config.concurrency,
        max_failures: config.max_failures,
        breaker_streak: config.circuit_breaker,
        ambiguous_settle: config.request_timeout,
        outcome_after: config.outcome_after,
        contact_limits: config.contact_limits,
        ..DispatchSettings::default()
    };
    Dispatcher::new(
        store.clone(),
        Arc::new(studio.client.clone()),
        Arc::new(SystemClock),
        settings,
        Arc::new(RateLimits::for_store(config.rate, store)),
    )
}

/// `flowcast simulator`
pub(super) async fn simulator(
    listen: &str,
    lifetime: &str,
    rate_cap: Option<u32>,
    replies: Option<&Path>,
) -> CommandResult {
    let addr = listen.parse().with_context(|| format!("--listen {listen:?}")).map_err(Failure::input)?;
    let lifetime = parse_duration(lifetime).map_err(|e| Failure::input(anyhow!("--lifetime: {e}")))?;
    let replies = match replies {
        Some(path) => read_replies(path).map_err(|e| Failure::input(anyhow!("--replies: {e}")))?,
        None => HashMap::new(),
    };
    let config =
        SimConfig { lifetime: (!lifetime.is_zero()).then_some(lifetime), rate_cap, replies, ..SimConfig::default() };
    let sim = Simulator::start_on(addr, config)
        .await
        .with_context(|| format!("listening on {listen}"))
        .map_err(Failure::input)?;
    println!("Studio simulator listening on {}", sim.url());
    println!(
        "point flowcast at it with FLOWCAST_STUDIO_URL={} and any TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN",
        sim.url()
    );
    let _ = std::io::stdout().flush();
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C").map_err(Failure::input)?;
    Ok(0)
}
