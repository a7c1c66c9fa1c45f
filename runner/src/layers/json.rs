//! `json = true`: an event whose data is not JSON is a permanent failure,
//! refused before the handler (or its role) runs.

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
}
