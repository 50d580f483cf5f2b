//! `flowcast flows validate|deploy`: Studio Flow definitions as code.

use anyhow::anyhow;

use super::{CommandResult, Failure, connect_studio};
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
    }
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
    let vars = flows::variables(env_file).map_err(Failure::input)?;
    let mut loaded = Vec::new();
    let mut problems = 0;
    for name in &names {
        match flows::load(&config.flows, name, &vars) {
            Ok(def) => loaded.push(def),
            Err(e) => {
                println!("{e}");
                problems += 1;
            }
        }
    }
    let studio = connect_studio(config).await?;
    for def in &loaded {
        let file = def.file.display().to_string();
        match studio.client.validate_flow(&def.name, "published", &def.json).await {
            Ok(()) => println!("{file}: valid"),
            Err(e @ StudioError::Invalid(_)) => {
                print_refusal(&file, &e);
                problems += 1;
            }
            Err(e) => return Err(Failure::studio(anyhow!("{file}: Studio could not validate it: {e}"))),
        }
    }
    println!("{} flow(s) checked: {} problem(s)", names.len(), problems);
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
    let vars = flows::variables(env_file).map_err(Failure::input)?;
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
            Some(p) => studio.client.update_flow(&p.sid, status, &def.json, &commit).await,
            None => studio.client.create_flow(name, status, &def.json, &commit).await,
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
