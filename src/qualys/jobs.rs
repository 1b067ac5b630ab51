//! The deployment-job endpoints: create, get, update, the paged summary list, and the bulk
//! delete and status calls with one outcome per id.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Url;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::client::Client;
use super::endpoint::Endpoint;
use super::error::Error;
use super::model::{BulkItemResult, IdList, JobBody, JobSummary, values};
use super::retry::Call;

/// A learned page size is trusted this long; then one list reads to the end again, so a
/// gateway that lowered its cap is noticed within the hour.
const PAGE_SIZE_RELEARN: Duration = Duration::from_secs(3600);

/// The page size a list of this connection really returned.
#[derive(Clone, Debug)]
pub(super) struct LearnedPageSize {
    size: u32,
    at: Instant,
}

/// The states a job can be put in through the status endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireState {
    Enabled,
    Disabled,
}

impl WireState {
    pub fn as_str(self) -> &'static str {
        match self {
            WireState::Enabled => values::ENABLED,
            WireState::Disabled => values::DISABLED,
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
        if let Some(body) = self.remembered_job(id).await {
            return Ok(body);
        }
        let result = self.fetch_job(id).await;
        match &result {
            Ok(body) => self.remember(id, body),
            Err(Error::NotFound { .. }) => self.forget(id, true),
            Err(_) => {}
        }
        result
    }

    async fn fetch_job(&self, id: &str) -> Result<JobBody, Error> {
        let call = Call::new(Endpoint::Get, self.url(&["pm", "v1", "deploymentjob", id])?)
            .what(format!("deployment job {id}"))
            .job(id);
        let bytes = self.execute(&call).await?;
        let job: JobBody = decode(Endpoint::Get, &bytes)?;
        // A gateway that deletes softly keeps the job readable; to every caller it is gone.
        if is_marked_deleted(&job) {
            return Err(Error::NotFound {
                what: format!("deployment job {id} (marked deleted)"),
            });
        }
        Ok(job)
    }

    /// `PATCH /pm/v1/deploymentjob/update/{id}` with the full body (GET, modify, PATCH).
    pub async fn update_job(&self, id: &str, body: &JobBody) -> Result<JobBody, Error> {
        check_id(id)?;
        self.forget(id, false);
        let call = Call::new(
            Endpoint::Update,
            self.url(&["pm", "v1", "deploymentjob", "update", id])?,
        )
        .json(body)?
        .what(format!("deployment job {id}"))
        .job(id);
        match self.execute(&call).await {
            Ok(bytes) => decode(Endpoint::Update, &bytes),
            Err(e) => Err(self.explain_refused_update(id, body, e).await),
        }
    }

    /// An update refused outright (400, 409, 422) of an On-demand or Once job that is enabled:
    /// Qualys does not let such a job be edited (nor disabled) once enabled, so nothing the
    /// spec can say will be accepted; the error says so instead of repeating the gateway's
    /// words. Costs one GET, and only on such a refusal.
    async fn explain_refused_update(&self, id: &str, body: &JobBody, error: Error) -> Error {
        let refused = match &error {
            Error::Invalid { .. } => true,
            Error::Unexpected { status, .. } => *status == 409,
            _ => false,
        };
        let one_shot = |job: &JobBody| {
            job.schedule_type
                .get()
                .is_some_and(|t| [values::ON_DEMAND, values::ONCE].contains(&t.as_str()))
        };
        if !refused || !one_shot(body) {
            return error;
        }
        let live = match self.get_job(id).await {
            Ok(live) => live,
            Err(_) => return error,
        };
        let enabled = live.status.get().map(String::as_str) == Some(values::ENABLED);
        if !(enabled && one_shot(&live)) {
            return error;
        }
        let schedule = live.schedule_type.get().cloned().unwrap_or_default();
        Error::Invalid {
            field: Some("status".to_owned()),
            message: format!(
                "job {id} is an enabled {schedule} job, and Qualys refuses to update On-demand \
                 and Once jobs once they are enabled (the gateway said: {error}); leave it \
                 as it is, or delete it and create a new one"
            ),
        }
    }

    /// Every job summary of `platform` (`Windows` or `Linux`), page by page (0-based).
    ///
    /// The gateway may return fewer items than the `pageSize` asked for (it may clamp the page
    /// size silently), so a short page ends the list only once the connection's real page size
    /// is known: until then — the first list of a connection, or when the size was learned over
    /// an hour ago — the walk reads on to an empty page and then remembers the largest page
    /// that came back. A page longer than the size remembered means the gateway changed: the
    /// walk reads on to an empty page and learns again. A page that brings no id not seen
    /// already also ends the walk (a gateway ignoring `pageNumber` would otherwise be asked
    /// forever). Ids seen twice (a job created between pages shifts the offsets) are kept once.
    pub async fn list_summaries(&self, platform: &str) -> Result<Vec<JobSummary>, Error> {
        self.list_summaries_with(platform, Some).await
    }

    /// [`list_summaries`](Self::list_summaries), keeping of each summary only what `keep`
    /// makes of it (`None`: drop it). Summaries are decoded a page at a time, so a caller that
    /// keeps a few fields of 10,000 jobs never holds 10,000 whole summaries.
    pub async fn list_summaries_with<T>(
        &self,
        platform: &str,
        mut keep: impl FnMut(JobSummary) -> Option<T>,
    ) -> Result<Vec<T>, Error> {
        if platform.trim().is_empty() {
            return Err(Error::Invalid {
                field: Some("platform".to_owned()),
                message: "a platform (Windows or Linux) is required".to_owned(),
            });
        }
        let page_size = self.inner.opts.page_size;
        // The size a page must reach for another to follow; `None` until it is known.
        let mut trusted = self.learned_page_size();
        let mut largest = 0;
        let mut reached_the_end = false;
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
            self.inner.list_calls.fetch_add(1, Ordering::Relaxed);
            let bytes = self.execute(&call).await?;
            let mut new = 0;
            let count = decode_each(Endpoint::ListSummaries, &bytes, |item: JobSummary| {
                let fresh = match item.id.get() {
                    Some(id) => seen.insert(id.clone()),
                    None => true,
                };
                if fresh {
                    new += 1;
                    // Kept in the list by a gateway that deletes softly; gone for every caller.
                    if item.deleted.get() != Some(&true)
                        && let Some(kept) = keep(item)
                    {
                        all.push(kept);
                    }
                }
            })?;
            if count == 0 {
                reached_the_end = true;
                break;
            }
            largest = largest.max(count);
            if new == 0 {
                warn!(
                    platform,
                    page, "a page of the job list brought no new job; stopping there"
                );
                break;
            }
            match trusted {
                Some(size) if count > size => {
                    debug!(
                        platform,
                        page,
                        count,
                        learned = size,
                        "a page longer than the learned page size; reading on to an empty page"
                    );
                    trusted = None;
                }
                Some(size) if count < size => break,
                _ => {}
            }
        }
        if reached_the_end && trusted.is_none() && largest > 0 {
            self.learn_page_size(largest);
        }
        Ok(all)
    }

    /// The page size this connection's gateway really returns, when a recent list showed it.
    pub fn learned_page_size(&self) -> Option<u32> {
        let learned = self.inner.paging.lock().ok()?.clone()?;
        (learned.at.elapsed() < PAGE_SIZE_RELEARN).then_some(learned.size)
    }

    /// Summary pages this connection has asked for so far (all clones and tenants).
    pub fn list_calls(&self) -> u64 {
        self.inner.list_calls.load(Ordering::Relaxed)
    }

    fn learn_page_size(&self, size: u32) {
        if size < self.inner.opts.page_size {
            debug!(
                size,
                asked = self.inner.opts.page_size,
                "the gateway returns shorter pages than asked for"
            );
        }
        if let Ok(mut slot) = self.inner.paging.lock() {
            *slot = Some(LearnedPageSize {
                size,
                at: Instant::now(),
            });
        }
    }

    /// [`list_summaries`](Self::list_summaries) of Windows, then of Linux.
    pub async fn list_all_summaries(&self) -> Result<Vec<JobSummary>, Error> {
        let mut all = self.list_summaries(values::WINDOWS).await?;
        all.extend(self.list_summaries(values::LINUX).await?);
        Ok(all)
    }

    /// `DELETE /pm/v1/deploymentjobs` with `{"ids": [...]}`: one outcome per distinct id, in the
    /// order given, exactly as the gateway reported them (what `check` shows).
    pub async fn delete_jobs(&self, ids: &[String]) -> Result<Vec<ItemOutcome>, Error> {
        ids.iter().for_each(|id| self.forget(id, true));
        let url = self.url(&["pm", "v1", "deploymentjobs"])?;
        self.bulk(Endpoint::Delete, url, ids).await
    }

    /// [`delete_jobs`](Self::delete_jobs), where "gone" is what counts, not the gateway's
    /// words: an id the delete did not confirm — a per-item failure, or a whole call that
    /// failed with anything but 401/403 (e.g. a 404 for an unknown id, a 5xx after the
    /// retries) — is looked up with a GET, and a 404 or a `deletedBy`/`deleted` mark makes it
    /// `Ok`. An id still there keeps its failure; a whole call that failed is returned as it
    /// failed unless every id turned out gone.
    pub async fn delete_jobs_confirmed(&self, ids: &[String]) -> Result<Vec<ItemOutcome>, Error> {
        match self.delete_jobs(ids).await {
            Ok(outcomes) => {
                let mut confirmed = Vec::with_capacity(outcomes.len());
                for mut outcome in outcomes {
                    if outcome.result.is_err() && self.is_gone(&outcome.id).await {
                        outcome.result = Ok(());
                    }
                    confirmed.push(outcome);
                }
                Ok(confirmed)
            }
            Err(
                e @ (Error::Unauthorized { .. } | Error::Forbidden { .. } | Error::Config { .. }),
            ) => Err(e),
            Err(e @ Error::Invalid { .. }) if ids.iter().any(|id| check_id(id).is_err()) => Err(e),
            Err(whole) => {
                let mut gone = Vec::new();
                for id in ids {
                    if gone.iter().any(|o: &ItemOutcome| &o.id == id) {
                        continue;
                    }
                    if !self.is_gone(id).await {
                        return Err(whole);
                    }
                    gone.push(ItemOutcome {
                        id: id.clone(),
                        name: None,
                        result: Ok(()),
                    });
                }
                Ok(gone)
            }
        }
    }

    /// Whether a GET shows the job gone (404, or marked deleted). A GET that fails otherwise
    /// proves nothing: not gone.
    async fn is_gone(&self, id: &str) -> bool {
        match self.get_job(id).await {
            Err(Error::NotFound { .. }) => {
                debug!(id, "the delete did not confirm, but the job is gone");
                true
            }
            Ok(_) => false,
            Err(e) => {
                debug!(id, error = %e, "cannot confirm a failed delete");
                false
            }
        }
    }

    /// `POST /pm/v1/deploymentjobs/update/status/{Enabled|Disabled}`: one outcome per distinct
    /// id, in the order given.
    pub async fn set_status(
        &self,
        ids: &[String],
        state: WireState,
    ) -> Result<Vec<ItemOutcome>, Error> {
        ids.iter().for_each(|id| self.forget(id, false));
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

/// Decode a JSON list one item at a time, handing each to `each` as it is read: a page of
/// 1,000 summaries is never held whole beside its own bytes. Returns how many there were.
fn decode_each<T: serde::de::DeserializeOwned>(
    endpoint: Endpoint,
    bytes: &[u8],
    each: impl FnMut(T),
) -> Result<u32, Error> {
    struct Each<F, T>(F, std::marker::PhantomData<T>);
    impl<'de, F: FnMut(T), T: serde::de::DeserializeOwned> serde::de::Visitor<'de> for Each<F, T> {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<u32, A::Error> {
            let mut count = 0u32;
            while let Some(item) = seq.next_element::<T>()? {
                (self.0)(item);
                count = count.saturating_add(1);
            }
            Ok(count)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde::Deserializer::deserialize_seq(&mut de, Each(each, std::marker::PhantomData))
        .and_then(|count| de.end().map(|()| count))
        .map_err(|e| Error::Decode {
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

/// A `deletedBy` with a date, or `deleted: true`: soft-deleted.
fn is_marked_deleted(job: &JobBody) -> bool {
    let by = job.deleted_by.get().is_some_and(|a| !a.date.is_unset());
    let flag = job.extra.get("deleted") == Some(&serde_json::Value::Bool(true));
    by || flag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_each_hands_over_every_item_in_order_and_refuses_what_is_not_one_list() {
        let mut names = Vec::new();
        let count = decode_each(
            Endpoint::ListSummaries,
            br#"[{"id": "a", "name": "x"}, {"name": "y"}]"#,
            |s: JobSummary| names.push(s.name.get().cloned()),
        )
        .unwrap();
        assert_eq!(count, 2);
        assert_eq!(names, [Some("x".to_string()), Some("y".to_string())]);
        assert_eq!(
            decode_each(Endpoint::ListSummaries, b"[]", |_: JobSummary| {}).unwrap(),
            0
        );
        for bad in [&br#"{"id": "a"}"#[..], b"[] []", b"[{\"id\": 1}"] {
            let err = decode_each(Endpoint::ListSummaries, bad, |_: JobSummary| {}).unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        }
    }
}
