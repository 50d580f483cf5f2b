//! `flowcast serve`: the service in the foreground until SIGINT or SIGTERM,
//! then a drain of the requests in flight.

use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::studio::{connect_studio, dispatcher, resolver};
use super::{CommandResult, Failure, folders, lock_ledger, open_store, shutdown_signal};
use crate::config::Config;
use crate::flows::FlowResolver;
use crate::schedule::SystemClock;
use crate::service::{HttpConfig, Service, ServiceSettings, serve_http};

pub(super) async fn serve(config: &Config) -> CommandResult {
    // A name such as `localhost:8080` is resolved; the first address is the
    // one bound, and the one whose reach decides whether a token is needed.
    let listen = tokio::net::lookup_host(config.listen.as_str())
        .await
        .with_context(|| format!("listen address {:?}", config.listen))
        .map_err(Failure::input)?
        .next()
        .ok_or_else(|| Failure::input(anyhow!("listen address {:?} resolves to no address", config.listen)))?;
    if !listen.ip().is_loopback() && config.admin_token.is_none() {
        return Err(Failure::input(anyhow!(
            "refusing to listen on {listen} without FLOWCAST_ADMIN_TOKEN: the API would be open to the network"
        )));
    }
    let store = open_store(config).await?;
    // The lock file names this service's address: `flowcast run` reads it to
    // start runs here instead of being refused.
    let holder = format!("{}http://{listen}", super::remote::SERVE_HOLDER);
    let _lock = lock_ledger(&store, &holder).await?;
    crate::telemetry::install();
    let studio = connect_studio(config).await?;
    let dispatcher = dispatcher(config, &store, &studio);
    crate::runs::set_default_notify(config.notify.clone());
    let deliverer = crate::notify::Deliverer::new(
        store.clone(),
        config.notify_secret.clone(),
        Arc::new(SystemClock),
        crate::notify::NotifySettings { retry_base: config.notify_retry, ..Default::default() },
    );
    let settings = ServiceSettings {
        catch_up: config.catch_up,
        collect: super::collect::settings(config),
        retention: config.retention,
        ..ServiceSettings::default()
    };
    let mut service = Service::new(
        store,
        dispatcher,
        Arc::new(SystemClock),
        folders(config),
        settings,
        Box::new(resolver(config, &studio)) as Box<dyn FlowResolver>,
    );
    service.address = Some(format!("http://{listen}"));
    let service = Arc::new(service);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))
        .map_err(Failure::input)?;
    if config.twilio.auth_token.is_some() && config.public_url.is_none() {
        tracing::warn!(
            "FLOWCAST_PUBLIC_URL is not set: webhook signatures are checked against http://{{Host}}/webhooks/studio, \
             so behind TLS termination or a proxy every genuine Twilio delivery gets 403; set it to the base URL \
             Twilio posts to"
        );
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http = {
        let http_config = HttpConfig {
            admin_token: config.admin_token.clone(),
            webhook_token: config.twilio.auth_token.clone(),
            public_url: config.public_url.clone(),
            listen: Some(config.listen.clone()),
            ..HttpConfig::default()
        };
        let service = Arc::clone(&service);
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_http(listener, service, http_config, token).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        })
    };
    tracing::info!(listen = %listen, campaigns = %config.campaigns.display(), ledger = %config.db, "flowcast serve started");
    let signal = {
        let token = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new sends; waiting for requests in flight");
            token.cancel();
        })
    };
    // Several instances: the leader alone delivers, so an event goes out once.
    let delivering =
        tokio::spawn(crate::service::cluster::while_leading(service.watch_leading(), shutdown.clone(), move |token| {
            deliverer.clone().run(token)
        }));
    Arc::clone(&service).run_loops(shutdown.clone()).await;
    shutdown.cancel();
    signal.abort();
    let _ = http.await;
    let _ = delivering.await;
    tracing::info!("flowcast serve stopped");
    Ok(0)
}
