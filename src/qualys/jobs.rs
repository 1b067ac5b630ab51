//! The deployment-job endpoints: create, get, update, the paged summary list, and the bulk
//! delete and status calls with one outcome per id.

use reqwest::Url;
use tracing::warn;

use super::client::Client;
use super::endpoint::Endpoint;
use super::error::Error;
use super::model::{BulkItemResult, IdList, JobBody, JobSummary, values};
use super::retry::Call;

/// The states a job can be put in through the status endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    Enabled,
    Disabled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Enabled => values::ENABLED,
            JobState::Disabled => values::DISABLED,
        }
    }
}

/// The outcome of one id of a bulk call (delete, status change).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemOutcome {
    pub id: String,
    /// The job name, when the gateway reported it.
    pub name: Option<String>,
    /// `Err(Error::ItemFailed { .. })` when the gateway reported a failure for this id, or did
    /// not mention it at all.
    pub result: Result<(), Error>,
}
impl Client {
    /// `POST /pm/v1/deploymentjob`. Never retried once the request may have reached the
    /// server: such failures are [`Error::OutcomeUnknown`].
    pub async fn create_job(&self, body: &JobBody) -> Result<JobBody, Error> {
        let name = body.job_name().map(str::to_owned);
        let call = Call::new(Endpoint::Create, self.url(&["pm", "v1", "deploymentjob"])?)
            .json(body)?
            .create(name.clone())
            .what("the create endpoint (is the gateway URL right?)");
        let bytes = self.execute(&call).await?;
        // The job exists now; an answer we cannot read leaves its id unknown.
        let unknown = |cause: String| Error::OutcomeUnknown {
            name: name.clone(),
            cause,
        };
        let job = JobBody::from_json(&bytes)
            .map_err(|e| unknown(format!("the gateway's answer could not be read: {e}")))?;
        if job.job_id().is_none_or(str::is_empty) {
            return Err(unknown("the gateway's answer has no job id".to_owned()));
        }
        Ok(job)
    }

    /// `GET /pm/v1/deploymentjob/{id}`.
    pub async fn get_job(&self, id: &str) -> Result<JobBody, Error> {
        check_id(id)?;
        let call = Call::new(Endpoint::Get, self.url(&["pm", "v1", "deploymentjob", id])?)
            .what(format!("deployment job {id}"));
        let bytes = self.execute(&call).await?;
        decode(Endpoint::Get, &bytes)
    }

    /// `PATCH /pm/v1/deploymentjob/update/{id}` with the full body (GET, modify, PATCH).
    pub async fn update_job(&self, id: &str, body: &JobBody) -> Result<JobBody, Error> {
        check_id(id)?;
        let call = Call::new(
            Endpoint::Update,
            self.url(&["pm", "v1", "deploymentjob", "update", id])?,
        )
        .json(body)?
        .what(format!("deployment job {id}"));
        let bytes = self.execute(&call).await?;
        decode(Endpoint::Update, &bytes)
    }

    /// Every job summary of `platform` (`Windows` or `Linux`), page by page (0-based) until a
    /// page comes back shorter than the page size (or brings no job not seen already). Ids seen
    /// twice (a job created between pages shifts the offsets) are kept once.
    pub async fn list_summaries(&self, platform: &str) -> Result<Vec<JobSummary>, Error> {
        if platform.trim().is_empty() {
            return Err(Error::Invalid {
                field: Some("platform".to_owned()),
                message: "a platform (Windows or Linux) is required".to_owned(),
            });
        }
        let page_size = self.inner.opts.page_size;
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        for page in 0u32.. {
            let mut url = self.url(&["pm", "v1", "deploymentjobs", "summary"])?;
            url.query_pairs_mut()
                .append_pair("platform", platform)
                .append_pair("pageNumber", &page.to_string())
                .append_pair("pageSize", &page_size.to_string());
            let call = Call::new(Endpoint::ListSummaries, url)
                .what("the job summary endpoint (is the gateway URL right?)");
            let bytes = self.execute(&call).await?;
            let items: Vec<JobSummary> = decode(Endpoint::ListSummaries, &bytes)?;
            let count = items.len();
            let mut new = 0;
            for item in items {
                let fresh = match item.id.get() {
                    Some(id) => seen.insert(id.clone()),
                    None => true,
                };
                if fresh {
                    all.push(item);
                    new += 1;
                }
            }
            if count < page_size as usize {
                break;
            }
            if new == 0 {
                // A gateway that ignores pageNumber would otherwise be asked forever.
                warn!(
                    platform,
                    page, "a full page of the job list brought no new job; stopping there"
                );
                break;
            }
        }
        Ok(all)
    }

    /// [`list_summaries`](Self::list_summaries) of Windows, then of Linux.
    pub async fn list_all_summaries(&self) -> Result<Vec<JobSummary>, Error> {
        let mut all = self.list_summaries(values::WINDOWS).await?;
        all.extend(self.list_summaries(values::LINUX).await?);
        Ok(all)
    }

    /// `DELETE /pm/v1/deploymentjobs` with `{"ids": [...]}`: one outcome per distinct id, in the
    /// order given.
    pub async fn delete_jobs(&self, ids: &[String]) -> Result<Vec<ItemOutcome>, Error> {
        let url = self.url(&["pm", "v1", "deploymentjobs"])?;
        self.bulk(Endpoint::Delete, url, ids).await
    }

    /// `POST /pm/v1/deploymentjobs/update/status/{Enabled|Disabled}`: one outcome per distinct
    /// id, in the order given.
    pub async fn set_status(
        &self,
        ids: &[String],
        state: JobState,
    ) -> Result<Vec<ItemOutcome>, Error> {
        let url = self.url(&[
            "pm",
            "v1",
            "deploymentjobs",
            "update",
            "status",
            state.as_str(),
        ])?;
        self.bulk(Endpoint::SetStatus, url, ids).await
    }

    pub(super) async fn bulk(
        &self,
        endpoint: Endpoint,
        url: Url,
        ids: &[String],
    ) -> Result<Vec<ItemOutcome>, Error> {
        let mut distinct = Vec::new();
        for id in ids {
            check_id(id)?;
            if !distinct.contains(id) {
                distinct.push(id.clone());
            }
        }
        if distinct.is_empty() {
            return Ok(Vec::new());
        }
        let call = Call::new(endpoint, url)
            .json(&IdList {
                ids: distinct.clone(),
            })?
            .what("the bulk endpoint (is the gateway URL right?)");
        let bytes = self.execute(&call).await?;
        let items: Vec<BulkItemResult> = decode(endpoint, &bytes)?;
        Ok(distinct
            .into_iter()
            .map(|id| {
                let item = items.iter().find(|i| i.id.get() == Some(&id));
                let name = item.and_then(|i| i.name.get().cloned());
                let result = match item {
                    Some(i) if i.succeeded() => Ok(()),
                    Some(i) => Err(Error::ItemFailed {
                        id: id.clone(),
                        message: i
                            .error
                            .get()
                            .filter(|e| !e.is_empty())
                            .cloned()
                            .unwrap_or_else(|| {
                                format!(
                                    "the gateway reported status {:?} without a reason",
                                    i.status.get().map(String::as_str).unwrap_or("")
                                )
                            }),
                    }),
                    None => Err(Error::ItemFailed {
                        id: id.clone(),
                        message: "the gateway's answer did not mention this job".to_owned(),
                    }),
                };
                ItemOutcome { id, name, result }
            })
            .collect())
    }
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(
    endpoint: Endpoint,
    bytes: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Decode {
        endpoint,
        message: e.to_string(),
    })
}

pub(super) fn check_id(id: &str) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(Error::Invalid {
            field: Some("id".to_owned()),
            message: "a job id is required".to_owned(),
        });
    }
    Ok(())
}
