//! `flowcast flows validate|deploy`: Studio Flow definitions as code.

use anyhow::anyhow;

use super::studio::connect_studio;
use super::{CommandResult, Failure};
use crate::cli::FlowsCommand;
use crate::config::Config;
use crate::flows::{self, Deployed, Lock};
use crate::studio::StudioError;

pub(super) async fn command(config: &Config, command: FlowsCommand) -> CommandResult {
    match command {
        FlowsCommand::Validate { names, env_file } => validate(config, names, env_file.as_deref()).await,
        FlowsCommand::Deploy { names, draft, message, env_file } => {
            deploy(config, names, draft, message, env_file.as_deref()).await
        }
        FlowsCommand::Pull { names, all, force } => pull(config, names, all, force).await,
        FlowsCommand::Diff { name, env_file } => diff(config, &name, env_file.as_deref()).await,
        FlowsCommand::Revisions { name } => revisions(config, &name).await,
        FlowsCommand::TestUsers { name, addresses } => test_users(config, &name, &addresses).await,
    }
}

/// Runs a Flow API call, retrying what is safe to retry: 429s (after
/// `Retry-After`), and transient failures with exponential backoff — for a call
/// that changes nothing, or when the request never reached Studio. A create or
/// update whose fate is unknown is not blindly repeated: the error is reported.
async fn with_retries<T, F, Fut>(changes_state: bool, mut call: F) -> Result<T, StudioError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StudioError>>,
{
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let delay = match &error {
            StudioError::Throttled { retry_after, .. } => retry_after.unwrap_or(std::time::Duration::from_secs(1)),
            StudioError::Transient { ambiguous, .. } if !changes_state || !ambiguous => crate::domain::backoff_delay(
                attempt - 1,
                std::time::Duration::from_millis(500),
                std::time::Duration::from_secs(10),
                rand::random::<f64>(),
            ),
            _ => return Err(error),
        };
        if attempt >= ATTEMPTS {
            return Err(error);
        }
        tracing::warn!(attempt, error = %error, "Studio call failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

/// The Studio SID of flow `name` for the connected account, from the lock file.
fn deployed_sid(config: &Config, account: &str, name: &str) -> Result<String, Failure> {
    let lock = Lock::read(&config.flows).map_err(Failure::input)?;
    lock.get(account, name).map(|d| d.sid.clone()).ok_or_else(|| {
        Failure::input(anyhow!(
            "flow {name:?} is not deployed for account {account} (no entry in {}); deploy or pull it first",
            Lock::path(&config.flows).display()
        ))
    })
}

async fn revisions(config: &Config, name: &str) -> CommandResult {
    let studio = connect_studio(config).await?;
    let sid = deployed_sid(config, &studio.account_sid, name)?;
    let revisions = with_retries(false, || studio.client.flow_revisions(&sid)).await.map_err(Failure::studio)?;
    println!("{name} ({sid}): {} revision(s)", revisions.len());
    for r in revisions {
        println!(
            "  {:>4}  {:<10}  {:<20}  {}",
            r.revision.unwrap_or(0),
            r.status.unwrap_or_default(),
            r.date_created.unwrap_or_default(),
            r.commit_message.unwrap_or_default()
        );
    }
    Ok(0)
}

async fn diff(config: &Config, name: &str, env_file: Option<&std::path::Path>) -> CommandResult {
    let vars = flows::variables(config.flow_variables(), env_file).map_err(Failure::input)?;
    let local = flows::load(&config.flows, name, &vars).map_err(Failure::input)?;
    let studio = connect_studio(config).await?;
    let sid = deployed_sid(config, &studio.account_sid, name)?;
    let latest =
        with_retries(false, || studio.client.flow_revision(&sid, "LatestRevision")).await.map_err(Failure::studio)?;
    let deployed = latest.definition.unwrap_or_default();
    let differences = flows::diff(&local.value, &deployed);
    let file = local.file.display();
    if differences.is_empty() {
        println!("{file}: same as revision {} in Studio", latest.revision.unwrap_or(0));
        return Ok(0);
    }
    println!("{file}: differs from revision {} in Studio:", latest.revision.unwrap_or(0));
    for d in differences {
        println!("  {d}");
    }
    Ok(1)
}

async fn test_users(config: &Config, name: &str, addresses: &[String]) -> CommandResult {
    let studio = connect_studio(config).await?;
    let sid = deployed_sid(config, &studio.account_sid, name)?;
    let users = if addresses.is_empty() {
        with_retries(false, || studio.client.test_users(&sid)).await
    } else {
        with_retries(false, || studio.client.set_test_users(&sid, addresses)).await
    }
    .map_err(Failure::studio)?;
    println!("{name} ({sid}) test users: {}", if users.is_empty() { "none".to_string() } else { users.join(", ") });
    Ok(0)
}

async fn pull(config: &Config, names: Vec<String>, all: bool, force: bool) -> CommandResult {
    if names.is_empty() && !all {
        return Err(Failure::input(anyhow!("name the flows to pull, or use --all")));
    }
    let studio = connect_studio(config).await?;
    let account = studio.account_sid.clone();
    let mut lock = Lock::read(&config.flows).map_err(Failure::input)?;
    // Which Flows, under which file names.
    let mut wanted: Vec<(String, String)> = Vec::new();
    if all {
        let mut taken: std::collections::HashSet<String> = flows::names(&config.flows).into_iter().collect();
        let known: std::collections::HashMap<String, String> = lock
            .0
            .get(&account)
            .map(|m| m.iter().map(|(n, d)| (d.sid.clone(), n.clone())).collect())
            .unwrap_or_default();
        for flow in with_retries(false, || studio.client.list_flows()).await.map_err(Failure::studio)? {
            let name = match known.get(&flow.sid) {
                Some(n) => n.clone(),
                None => {
                    let n = flows::file_name_for(flow.friendly_name.as_deref().unwrap_or("flow"), &taken);
                    taken.insert(n.clone());
                    n
                }
            };
            wanted.push((name, flow.sid));
        }
    } else {
        for name in names {
            let sid = deployed_sid(config, &account, &name)?;
            wanted.push((name, sid));
        }
    }
    std::fs::create_dir_all(&config.flows).map_err(|e| Failure::input(anyhow!("{}: {e}", config.flows.display())))?;
    let mut code = 0;
    for (name, sid) in wanted {
        let file = config.flows.join(format!("{name}.json"));
        if file.exists() && !force {
            println!("{}: exists; not overwritten (use --force)", file.display());
            code = 1;
            continue;
        }
        let flow = with_retries(false, || studio.client.fetch_flow(&sid)).await.map_err(Failure::studio)?;
        let definition = flow.definition.unwrap_or_default();
        // A local file's ${VAR}s stay wherever Studio holds what they resolve
        // to; the file is meant for every account, not just this one.
        let local =
            std::fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let written = match &local {
            Some(template) => {
                let (kept, replaced) = flows::keep_placeholders(template, &definition);
                for path in replaced {
                    println!(
                        "{}: {path}: Studio's value differs from the ${{VAR}} placeholder; written as Studio has it",
                        file.display()
                    );
                }
                kept
            }
            None => definition.clone(),
        };
        let text = serde_json::to_string_pretty(&written).unwrap_or_default() + "\n";
        std::fs::write(&file, &text).map_err(|e| Failure::input(anyhow!("{}: {e}", file.display())))?;
        let hash = crate::domain::sha256_hex(definition.to_string().as_bytes());
        lock.set(&account, &name, Deployed { sid: sid.clone(), revision: flow.revision.unwrap_or(1), hash });
        lock.write(&config.flows).map_err(Failure::input)?;
        println!("{}: pulled {sid} revision {}", file.display(), flow.revision.unwrap_or(1));
    }
    Ok(code)
}

fn chosen(config: &Config, names: Vec<String>) -> Result<Vec<String>, Failure> {
    let names = if names.is_empty() { flows::names(&config.flows) } else { names };
    if names.is_empty() {
        return Err(Failure::input(anyhow!("no flow definitions (*.json) in {}", config.flows.display())));
    }
    Ok(names)
}

/// Prints Studio's refusal, one problem a line.
fn print_refusal(file: &str, error: &StudioError) {
    match error {
        StudioError::Invalid(e) if !e.details.is_empty() => {
            for d in &e.details {
                println!("{file}: {d}");
            }
        }
        other => println!("{file}: {other}"),
    }
}

async fn validate(config: &Config, names: Vec<String>, env_file: Option<&std::path::Path>) -> CommandResult {
    let names = chosen(config, names)?;
    let vars = flows::variables(config.flow_variables(), env_file).map_err(Failure::input)?;
    let mut loaded = Vec::new();
    let mut problems = 0;
    let mut warnings = 0;
    for name in &names {
        match flows::load(&config.flows, name, &vars) {
            Ok(def) => {
                for warning in flows::warnings(&def.file.display().to_string(), &def.value) {
                    println!("{warning}");
                    warnings += 1;
                }
                loaded.push(def)
            }
            Err(e) => {
                println!("{e}");
                problems += 1;
            }
        }
    }
    let studio = connect_studio(config).await?;
    for def in &loaded {
        let file = def.file.display().to_string();
        match with_retries(false, || studio.client.validate_flow(&def.name, "published", &def.json)).await {
            Ok(()) => println!("{file}: valid"),
            Err(e @ StudioError::Invalid(_)) => {
                print_refusal(&file, &e);
                problems += 1;
            }
            Err(e) => return Err(Failure::studio(anyhow!("{file}: Studio could not validate it: {e}"))),
        }
    }
    println!("{} flow(s) checked: {} problem(s), {warnings} warning(s)", names.len(), problems);
    Ok(if problems == 0 { 0 } else { 1 })
}

async fn deploy(
    config: &Config,
    names: Vec<String>,
    draft: bool,
    message: Option<String>,
    env_file: Option<&std::path::Path>,
) -> CommandResult {
    let names = chosen(config, names)?;
    let vars = flows::variables(config.flow_variables(), env_file).map_err(Failure::input)?;
    let studio = connect_studio(config).await?;
    let account = studio.account_sid.clone();
    let mut lock = Lock::read(&config.flows).map_err(Failure::input)?;
    let status = if draft { "draft" } else { "published" };
    let mut code = 0u8;
    for name in &names {
        let def = match flows::load(&config.flows, name, &vars) {
            Ok(def) => def,
            Err(e) => {
                println!("{e}");
                code = code.max(1);
                continue;
            }
        };
        let file = def.file.display().to_string();
        let previous = lock.get(&account, name).cloned();
        if previous.as_ref().is_some_and(|p| p.hash == def.hash) {
            println!("{file}: unchanged since revision {}; not re-sent", previous.map(|p| p.revision).unwrap_or(0));
            continue;
        }
        let commit = message.clone().unwrap_or_else(|| format!("flowcast deploy {name} (sha256 {})", &def.hash[..12]));
        let result = match &previous {
            Some(p) => with_retries(true, || studio.client.update_flow(&p.sid, status, &def.json, &commit)).await,
            None => with_retries(true, || studio.client.create_flow(name, status, &def.json, &commit)).await,
        };
        match result {
            Ok(flow) => {
                let revision = flow.revision.unwrap_or(1);
                println!(
                    "{file}: {} {} revision {revision} ({status}) for account {account}",
                    if previous.is_some() { "updated" } else { "created" },
                    flow.sid
                );
                lock.set(&account, name, Deployed { sid: flow.sid, revision, hash: def.hash.clone() });
                // Recorded after each Flow, so a later failure loses nothing.
                lock.write(&config.flows).map_err(Failure::input)?;
            }
            Err(e @ StudioError::Invalid(_)) => {
                print_refusal(&file, &e);
                code = code.max(1);
            }
            Err(e) => {
                println!("{file}: {e}");
                code = 2;
            }
        }
    }
    Ok(code)
}
