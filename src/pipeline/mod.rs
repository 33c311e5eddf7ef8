//! Job kinds as ordered lists of stages, and what a stage is given to run.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::queue::JobStore;

/// The built-in no-op kind: one stage that does nothing (the queue benchmark's job).
pub const NOOP_KIND: &str = "noop";

/// How a stage failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageError {
    /// Transient (network, storage, sink): the job is retried with backoff.
    #[error("{0}")]
    Retryable(String),
    /// The input can never succeed (corrupt file, wrong layout): the job goes dead at once.
    #[error("{0}")]
    Fatal(String),
    /// The stage stopped because its cancellation token fired.
    #[error("cancelled")]
    Cancelled,
}

/// Everything a stage gets. Earlier stages' outputs come from the checkpoint in PostgreSQL,
/// never from this process's memory, so a resumed job sees exactly what was committed.
#[derive(Clone)]
pub struct StageContext {
    pub job_id: i64,
    pub kind: Arc<str>,
    pub stage: Arc<str>,
    /// 1-based attempt number of the current run.
    pub attempt: i32,
    pub payload: Arc<Value>,
    /// `{stage: output}` for every stage already finished.
    pub checkpoint: Arc<Value>,
    pub cancel: CancellationToken,
    pub worker_id: Arc<str>,
    /// This run's fencing token (progress writes carry it; fenced writes check it).
    pub fencing_token: i64,
    /// Progress writes only.
    jobs: JobStore,
}

impl StageContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: i64,
        kind: Arc<str>,
        stage: Arc<str>,
        attempt: i32,
        payload: Arc<Value>,
        checkpoint: Arc<Value>,
        cancel: CancellationToken,
        worker_id: Arc<str>,
        fencing_token: i64,
        jobs: JobStore,
    ) -> Self {
        StageContext {
            job_id,
            kind,
            stage,
            attempt,
            payload,
            checkpoint,
            cancel,
            worker_id,
            fencing_token,
            jobs,
        }
    }

    /// The committed output of an earlier stage.
    pub fn output_of(&self, stage: &str) -> Option<&Value> {
        self.checkpoint.get(stage)
    }

    /// Shows how far the running stage got in `GET /v1/jobs/{id}`. Best effort: fenced, and a
    /// failed write is only logged (progress is not state).
    pub async fn report_progress(&self, progress: &Value) {
        let r = self
            .jobs
            .set_progress(self.job_id, self.fencing_token, progress)
            .await;
        if let Err(e) = r {
            tracing::debug!(error = %e, "progress not recorded");
        }
    }
}

/// One step of a job kind. Must be idempotent: after a crash it runs again with the same inputs.
pub trait Stage: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>>;
}

/// What a kind shows about a job beyond the generic fields (`GET /v1/jobs/{id}`'s `report`):
/// computed from the committed checkpoint, so the API never needs to know a kind's layout.
pub type Summary = Arc<dyn Fn(&Value) -> Option<Value> + Send + Sync>;

/// A named, ordered list of stages.
#[derive(Clone)]
pub struct JobKind {
    pub name: String,
    pub stages: Vec<Arc<dyn Stage>>,
    summary: Option<Summary>,
}

impl JobKind {
    pub fn new(name: impl Into<String>) -> Self {
        JobKind {
            name: name.into(),
            stages: Vec::new(),
            summary: None,
        }
    }

    pub fn stage(mut self, stage: impl Stage) -> Self {
        self.stages.push(Arc::new(stage));
        self
    }

    pub fn with_summary(
        mut self,
        f: impl Fn(&Value) -> Option<Value> + Send + Sync + 'static,
    ) -> Self {
        self.summary = Some(Arc::new(f));
        self
    }

    /// This kind's summary of a job with `checkpoint`.
    pub fn summary(&self, checkpoint: &Value) -> Option<Value> {
        self.summary.as_ref().and_then(|f| f(checkpoint))
    }

    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Index of the first stage whose output is not in `checkpoint`.
    pub fn next_stage(&self, checkpoint: &Value) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| checkpoint.get(s.name()).is_none())
    }
}

/// The job kinds this process knows, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<JobKind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, kind: JobKind) {
        assert!(
            !kind.stages.is_empty(),
            "job kind {} has no stages",
            kind.name
        );
        self.kinds.insert(kind.name.clone(), Arc::new(kind));
    }

    pub fn get(&self, name: &str) -> Option<&Arc<JobKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

/// Shorthand for stages written as async closures.
pub struct FnStage<F> {
    name: String,
    f: F,
}

impl<F> FnStage<F> {
    pub fn new(name: impl Into<String>, f: F) -> Self {
        FnStage {
            name: name.into(),
            f,
        }
    }
}

impl<F> Stage for FnStage<F>
where
    F: Fn(StageContext) -> BoxFuture<'static, Result<Value, StageError>> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>> {
        (self.f)(ctx)
    }
}

/// The `noop` kind.
pub fn noop_kind() -> JobKind {
    JobKind::new(NOOP_KIND).stage(FnStage::new("run", |_ctx| {
        async { Ok(Value::Null) }.boxed()
    }))
}
