//! `flowcast serve`: the service in the foreground until SIGINT or SIGTERM,
//! then a drain of the requests in flight.

use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::studio::{connect_studio, dispatcher, resolver};
use super::{CommandResult, Failure, folders, lock_ledger, open_store, shutdown_signal};
use crate::config::Config;
use crate::flows::FlowResolver;
use crate::schedule::SystemClock;
use crate::service::{HttpConfig, Service, ServiceSettings, router};

pub(super) async fn serve(config: &Config) -> CommandResult {
    let listen: std::net::SocketAddr =
        config.listen.parse().with_context(|| format!("listen address {:?}", config.listen)).map_err(Failure::input)?;
    if !listen.ip().is_loopback() && config.admin_token.is_none() {
        return Err(Failure::input(anyhow!(
            "refusing to listen on {listen} without FLOWCAST_ADMIN_TOKEN: the API would be open to the network"
        )));
    }
    let store = open_store(config).await?;
    let _lock = lock_ledger(&store, "flowcast serve").await?;
    crate::telemetry::install();
    let studio = connect_studio(config).await?;
    let dispatcher = dispatcher(config, &store, &studio);
    let settings = ServiceSettings { catch_up: config.catch_up, ..ServiceSettings::default() };
    let service = Arc::new(Service::new(
        store,
        dispatcher,
        Arc::new(SystemClock),
        folders(config),
        settings,
        Box::new(resolver(config, &studio)) as Box<dyn FlowResolver>,
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))
        .map_err(Failure::input)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http = {
        let http_config = HttpConfig {
            admin_token: config.admin_token.clone(),
            webhook_token: config.twilio.auth_token.clone(),
            public_url: config.public_url.clone(),
        };
        let app = router(Arc::clone(&service), http_config);
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { token.cancelled().await }).await;
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
    Arc::clone(&service).run_loops(shutdown.clone()).await;
    shutdown.cancel();
    signal.abort();
    let _ = http.await;
    tracing::info!("flowcast serve stopped");
    Ok(0)
}
