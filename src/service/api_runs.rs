//! Runs started over HTTP: with the campaign's own CSV, or with contacts sent
//! in the request. An idempotency key names the run, so a retried request
//! finds the run the first one made instead of starting a second.

use std::sync::Arc;

use super::Service;
use crate::domain::Trigger;
use crate::runs::{GivenError, GivenStart, RefusedContact};
use crate::store::StoreError;
use crate::studio::StudioApi;

/// The contacts of a run started over HTTP.
pub enum Contacts {
    /// The campaign's CSV, imported in the background like any run.
    CampaignFile,
    /// CSV text from the request (JSON bodies are turned into CSV first).
    Given(Vec<u8>),
}

/// A run started over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRun {
    New(i64),
    /// The run this idempotency key already made.
    Existing(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum ApiRunError {
    #[error("no campaign named {0:?}")]
    UnknownCampaign(String),
    #[error("{0}")]
    Flow(String),
    #[error("{0}")]
    Contacts(String),
    #[error(
        "campaign {0:?} reads its contacts from a CSV file; push contacts only to a campaign with trigger = \"api\""
    )]
    NotPushed(String),
    #[error("no contact in the request can be sent")]
    NothingValid(Vec<RefusedContact>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<S: StudioApi> Service<S> {
    /// Starts a run of campaign `name` keyed `run_key`.
    pub async fn start_api_run(&self, name: &str, run_key: String, contacts: Contacts) -> Result<ApiRun, ApiRunError> {
        let campaign = self
            .campaigns()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ApiRunError::UnknownCampaign(name.to_string()))?;
        if let Some(id) = self.store.run_by_key(&campaign.name, &run_key).await? {
            return Ok(ApiRun::Existing(id));
        }
        let flow = self
            .resolver
            .resolve(&campaign)
            .map_err(|e| ApiRunError::Flow(format!("{}: {e}", campaign.source.display())))?;
        let now = self.now_ms();
        if campaign.contacts.is_none() && matches!(contacts, Contacts::CampaignFile) {
            return Err(ApiRunError::Contacts(format!(
                "campaign {:?} has trigger = \"api\" and no CSV: send contacts in the body, or push them to \
                 /api/campaigns/{}/contacts",
                campaign.name, campaign.name
            )));
        }
        let started = match contacts {
            Contacts::CampaignFile => {
                match crate::runs::start(&self.store, &campaign, &flow, Trigger::Api, run_key.clone(), now, now).await?
                {
                    Some(id) => {
                        self.imports.spawn(&self.store, &campaign, id, Arc::clone(&self.clock));
                        ApiRun::New(id)
                    }
                    // Another request with this key got there first.
                    None => ApiRun::Existing(
                        self.store.run_by_key(&campaign.name, &run_key).await?.ok_or(StoreError::RunNotFound(0))?,
                    ),
                }
            }
            Contacts::Given(csv) => {
                match crate::runs::start_with_contacts(&self.store, &campaign, &flow, run_key, csv, now).await {
                    Ok(GivenStart::Started { id, .. }) => ApiRun::New(id),
                    Ok(GivenStart::Existing(id)) => ApiRun::Existing(id),
                    Ok(GivenStart::NothingValid(rows)) => return Err(ApiRunError::NothingValid(rows)),
                    Err(GivenError::Contacts(e)) => return Err(ApiRunError::Contacts(e.to_string())),
                    Err(GivenError::Store(e)) => return Err(e.into()),
                }
            }
        };
        if let ApiRun::New(id) = started {
            tracing::info!(run = id, campaign = %campaign.name, "run started over HTTP");
            self.wake.notify_one();
        }
        Ok(started)
    }
}

/// What a push of contacts did: the open run and each contact's job.
#[derive(Debug)]
pub struct Pushed {
    pub run: i64,
    pub contacts: Vec<crate::store::PushResult>,
}

impl<S: StudioApi> Service<S> {
    /// Adds contacts (CSV text; record `i` keyed `keys[i]`) to the open run of
    /// campaign `name`, which must have `trigger = "api"`, and wakes the
    /// dispatcher so that a contact due now goes at once.
    pub async fn push_contacts(
        &self,
        name: &str,
        csv: Vec<u8>,
        keys: Vec<Option<String>>,
    ) -> Result<Pushed, ApiRunError> {
        let campaign = self
            .campaigns()
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ApiRunError::UnknownCampaign(name.to_string()))?;
        if campaign.contacts.is_some() {
            return Err(ApiRunError::NotPushed(name.to_string()));
        }
        let flow = self
            .resolver
            .resolve(&campaign)
            .map_err(|e| ApiRunError::Flow(format!("{}: {e}", campaign.source.display())))?;
        let (run, contacts) = crate::runs::push_contacts(&self.store, &campaign, &flow, csv, keys, self.now_ms())
            .await
            .map_err(|e| match e {
                GivenError::Contacts(e) => ApiRunError::Contacts(e.to_string()),
                GivenError::Store(e) => ApiRunError::Store(e),
            })?;
        // A new open run needs a dispatch task; an existing one is woken.
        self.wake.notify_one();
        self.dispatcher.wake_all();
        Ok(Pushed { run, contacts })
    }
}
