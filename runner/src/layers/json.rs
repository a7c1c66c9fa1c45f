//! `json = true`: an event whose data is not JSON is a permanent failure,
//! refused before the handler (or its role) runs; in a batch, that item
//! alone.

use std::sync::Arc;

use async_trait::async_trait;
use jetrun_config::FunctionConfig;
use jetrun_functions::{Context, Event, Failure, Function, Outcome};

/// Refuses an event whose data is not JSON when `function` takes JSON.
pub(crate) fn check(function: &FunctionConfig, event: &Event) -> Result<(), Failure> {
    if function.json && !event.is_json() {
        let err = serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| format!("content type {:?}", event.datacontenttype));
        return Err(Failure::permanent(format!(
            "function {} takes JSON (json = true), but the event data is not JSON: {err}",
            function.name
        )));
    }
    Ok(())
}

pub(super) struct Checked {
    inner: Arc<dyn Function>,
    function: FunctionConfig,
}

impl Checked {
    /// `inner`, checked when `function` says `json = true`.
    pub(super) fn wrap(function: &FunctionConfig, inner: Arc<dyn Function>) -> Arc<dyn Function> {
        if !function.json {
            return inner;
        }
        Arc::new(Checked {
            inner,
            function: function.clone(),
        })
    }
}

#[async_trait]
impl Function for Checked {
    async fn call(&self, event: &Event, ctx: &Context) -> Outcome {
        check(&self.function, event)?;
        self.inner.call(event, ctx).await
    }

    /// Each item checked: the refused ones fail, the rest go on as one batch.
    async fn call_batch(&self, items: &[(Event, Context)]) -> Vec<Outcome> {
        let checks: Vec<Result<(), jetrun_functions::Failure>> = items
            .iter()
            .map(|(event, _)| check(&self.function, event))
            .collect();
        let passed: Vec<(Event, Context)> = items
            .iter()
            .zip(&checks)
            .filter(|(_, check)| check.is_ok())
            .map(|(item, _)| item.clone())
            .collect();
        let mut called = if passed.is_empty() {
            Vec::new()
        } else {
            self.inner.call_batch(&passed).await
        }
        .into_iter();
        checks
            .into_iter()
            .map(|check| match check {
                Ok(()) => called.next().unwrap_or_else(|| {
                    Err(jetrun_functions::Failure::retryable(
                        "the handler gave fewer outcomes than the batch had items",
                    ))
                }),
                Err(failure) => Err(failure),
            })
            .collect()
    }
}
