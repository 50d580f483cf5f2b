//! Studio's Flow API over HTTP (flows as code): validate, create, update, fetch
//! and list Flows, their revisions and test users, and the [`FlowInfo`] and
//! [`FlowRevision`] they answer with.

use serde::Deserialize;

use super::client::{ListMeta, with_form};
use super::{HttpStudio, StudioError, StudioResult};

/// A Flow as Studio describes it (the fields flowcast uses).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct FlowInfo {
    pub sid: String,
    #[serde(default)]
    pub friendly_name: Option<String>,
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
}

/// One revision of a Flow.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct FlowRevision {
    #[serde(default)]
    pub revision: Option<i64>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub commit_message: Option<String>,
    #[serde(default)]
    pub date_created: Option<String>,
    #[serde(default)]
    pub definition: Option<serde_json::Value>,
}

/// The Flow API (flows as code). Not part of [`StudioApi`](super::StudioApi): only the `flows`
/// commands use it, always over HTTP.
impl HttpStudio {
    /// `POST /v2/Flows/Validate`; a refusal carries Studio's list of problems in
    /// the error's `details`.
    pub async fn validate_flow(&self, name: &str, status: &str, definition: &str) -> StudioResult<()> {
        #[derive(Deserialize)]
        struct Valid {
            #[serde(default)]
            valid: Option<bool>,
        }
        let form = [("FriendlyName", name), ("Status", status), ("Definition", definition)];
        let answer: Valid = self
            .send("flow_validate", with_form(self.client.post(self.url("/v2/Flows/Validate")), &form), false)
            .await?;
        match answer.valid {
            Some(false) => Err(StudioError::Invalid(super::TwilioError::from_body(
                200,
                r#"{"message": "Studio says the definition is not valid"}"#,
            ))),
            _ => Ok(()),
        }
    }

    /// `POST /v2/Flows`: a new Flow.
    pub async fn create_flow(
        &self,
        name: &str,
        status: &str,
        definition: &str,
        message: &str,
    ) -> StudioResult<FlowInfo> {
        let form = [("FriendlyName", name), ("Status", status), ("Definition", definition), ("CommitMessage", message)];
        self.send("flow_create", with_form(self.client.post(self.url("/v2/Flows")), &form), false).await
    }

    /// `POST /v2/Flows/{FW}`: a new revision of an existing Flow.
    pub async fn update_flow(
        &self,
        sid: &str,
        status: &str,
        definition: &str,
        message: &str,
    ) -> StudioResult<FlowInfo> {
        let form = [("Status", status), ("Definition", definition), ("CommitMessage", message)];
        self.send("flow_update", with_form(self.client.post(self.url(&format!("/v2/Flows/{sid}"))), &form), false).await
    }

    /// `GET /v2/Flows/{FW}`.
    pub async fn fetch_flow(&self, sid: &str) -> StudioResult<FlowInfo> {
        self.send("flow_fetch", self.client.get(self.url(&format!("/v2/Flows/{sid}"))), false).await
    }

    /// `GET /v2/Flows`, every page.
    pub async fn list_flows(&self) -> StudioResult<Vec<FlowInfo>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            flows: Vec<FlowInfo>,
            #[serde(default)]
            meta: Option<ListMeta>,
        }
        let mut out = Vec::new();
        let mut page: Page = self
            .send("flow_list", self.client.get(self.url("/v2/Flows")).query(&[("PageSize", "1000")]), false)
            .await?;
        for _ in 0..10_000 {
            out.append(&mut page.flows);
            let Some(next) = page.meta.and_then(|m| m.next_page_url).filter(|n| !n.is_empty()) else { break };
            page = self.send("flow_list", self.client.get(self.next_page(&next)), false).await?;
        }
        Ok(out)
    }

    /// `GET /v2/Flows/{FW}/Revisions`, newest first (first page, up to 1000).
    pub async fn flow_revisions(&self, sid: &str) -> StudioResult<Vec<FlowRevision>> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            revisions: Vec<FlowRevision>,
        }
        let page: Page = self
            .send(
                "flow_revisions",
                self.client.get(self.url(&format!("/v2/Flows/{sid}/Revisions"))).query(&[("PageSize", "1000")]),
                false,
            )
            .await?;
        Ok(page.revisions)
    }

    /// `GET /v2/Flows/{FW}/Revisions/{n}` (`LatestRevision` for the newest).
    pub async fn flow_revision(&self, sid: &str, revision: &str) -> StudioResult<FlowRevision> {
        self.send("flow_revision", self.client.get(self.url(&format!("/v2/Flows/{sid}/Revisions/{revision}"))), false)
            .await
    }

    /// `GET /v2/Flows/{FW}/TestUsers`.
    pub async fn test_users(&self, sid: &str) -> StudioResult<Vec<String>> {
        #[derive(Deserialize)]
        struct Users {
            #[serde(default)]
            test_users: Vec<String>,
        }
        let users: Users = self
            .send("flow_test_users", self.client.get(self.url(&format!("/v2/Flows/{sid}/TestUsers"))), false)
            .await?;
        Ok(users.test_users)
    }

    /// `POST /v2/Flows/{FW}/TestUsers` with `TestUsers` repeated.
    pub async fn set_test_users(&self, sid: &str, users: &[String]) -> StudioResult<Vec<String>> {
        #[derive(Deserialize)]
        struct Users {
            #[serde(default)]
            test_users: Vec<String>,
        }
        let form: Vec<(&str, &str)> = users.iter().map(|u| ("TestUsers", u.as_str())).collect();
        let users: Users = self
            .send(
                "flow_test_users",
                with_form(self.client.post(self.url(&format!("/v2/Flows/{sid}/TestUsers"))), &form),
                false,
            )
            .await?;
        Ok(users.test_users)
    }
}
