//! Studio's Execution API over HTTP: the [`StudioApi`] implementation of
//! [`HttpStudio`] (create, fetch, end, list and context of Executions), the
//! calls the dispatcher makes for every contact.

use serde::Deserialize;

use super::client::{ListMeta, with_form};
use super::{CreateRequest, Execution, HttpStudio, ListFilter, Step, StudioApi, StudioResult};
use crate::domain::FlowSid;

#[derive(Deserialize)]
struct ListPage {
    #[serde(default)]
    executions: Vec<Execution>,
    #[serde(default)]
    meta: Option<ListMeta>,
}

#[derive(Deserialize)]
struct StepPage {
    #[serde(default)]
    steps: Vec<Step>,
    #[serde(default)]
    meta: Option<ListMeta>,
}

/// A context document: `{"context": {...}, ...}`.
#[derive(Deserialize)]
struct ContextBody {
    #[serde(default)]
    context: serde_json::Value,
}

/// Pages followed at most: Studio pages hold up to 1,000 rows, so this is far
/// past any real list, and a server that loops its `next_page_url` cannot hold
/// flowcast forever.
const MAX_PAGES: usize = 10_000;

/// Date filters as Studio reads them: RFC 3339, whole seconds, `Z`.
fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl StudioApi for HttpStudio {
    async fn create_execution(&self, flow: &FlowSid, request: &CreateRequest) -> StudioResult<Execution> {
        let form =
            [("To", request.to.as_str()), ("From", request.from.as_str()), ("Parameters", request.parameters.as_str())];
        let request = match self.create_url(flow.as_str()) {
            Some(url) => self.client.post(url),
            None => self.client.post(self.url(&format!("/v2/Flows/{flow}/Executions"))),
        };
        self.send("create", with_form(request, &form), true).await
    }

    async fn fetch_execution(&self, flow: &FlowSid, sid: &str) -> StudioResult<Execution> {
        self.send("fetch", self.client.get(self.url(&format!("/v2/Flows/{flow}/Executions/{sid}"))), false).await
    }

    async fn end_execution(&self, flow: &FlowSid, sid: &str) -> StudioResult<Execution> {
        let form = [("Status", "ended")];
        self.send(
            "end",
            with_form(self.client.post(self.url(&format!("/v2/Flows/{flow}/Executions/{sid}"))), &form),
            false,
        )
        .await
    }

    async fn list_executions(&self, flow: &FlowSid, filter: &ListFilter) -> StudioResult<Vec<Execution>> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(status) = filter.status {
            // Twilio spells this filter both `status` and `Status` in its own
            // descriptions of the API; both are sent so either server reads it.
            query.push(("status", status.to_string()));
            query.push(("Status", status.to_string()));
        }
        if let Some(from) = filter.date_created_from {
            query.push(("DateCreatedFrom", rfc3339(from)));
        }
        if let Some(to) = filter.date_created_to {
            query.push(("DateCreatedTo", rfc3339(to)));
        }
        // No page larger than what is wanted: a short list costs one small page.
        let wanted_max = filter.max.map_or(u32::MAX, |m| u32::try_from(m).unwrap_or(u32::MAX));
        query.push(("PageSize", filter.page_size.unwrap_or(1000).min(wanted_max).clamp(1, 1000).to_string()));
        let mut found = Vec::new();
        let mut page: ListPage = self
            .send("list", self.client.get(self.url(&format!("/v2/Flows/{flow}/Executions"))).query(&query), false)
            .await?;
        let wanted = |e: &Execution| filter.status.is_none_or(|s| e.status.as_deref().is_none_or(|x| x == s));
        for _ in 0..MAX_PAGES {
            // Whatever the server did with the filter, keep only what was asked.
            found.extend(page.executions.drain(..).filter(|e| wanted(e)));
            if filter.max.is_some_and(|max| found.len() >= max) {
                break;
            }
            let Some(next) = page.meta.and_then(|m| m.next_page_url).filter(|n| !n.is_empty()) else {
                break;
            };
            page = self.send("list", self.client.get(self.next_page(&next)), false).await?;
        }
        if let Some(max) = filter.max {
            found.truncate(max);
        }
        Ok(found)
    }

    async fn execution_context(&self, flow: &FlowSid, sid: &str) -> StudioResult<serde_json::Value> {
        let body: ContextBody = self
            .send("context", self.client.get(self.url(&format!("/v2/Flows/{flow}/Executions/{sid}/Context"))), false)
            .await?;
        Ok(body.context)
    }

    async fn list_steps(&self, flow: &FlowSid, execution: &str) -> StudioResult<Vec<Step>> {
        let url = self.url(&format!("/v2/Flows/{flow}/Executions/{execution}/Steps"));
        let mut page: StepPage = self.send("steps", self.client.get(url).query(&[("PageSize", "1000")]), false).await?;
        let mut found = Vec::new();
        for _ in 0..MAX_PAGES {
            found.append(&mut page.steps);
            let Some(next) = page.meta.and_then(|m| m.next_page_url).filter(|n| !n.is_empty()) else {
                break;
            };
            page = self.send("steps", self.client.get(self.next_page(&next)), false).await?;
        }
        Ok(found)
    }

    async fn step_context(&self, flow: &FlowSid, execution: &str, step: &str) -> StudioResult<serde_json::Value> {
        let url = self.url(&format!("/v2/Flows/{flow}/Executions/{execution}/Steps/{step}/Context"));
        let body: ContextBody = self.send("step_context", self.client.get(url), false).await?;
        Ok(body.context)
    }
}
