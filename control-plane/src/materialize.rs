//! A runtime worker used only to materialize: the control plane compiles and stores
//! artifacts but runs no function (the split topology's worker services do).

use async_trait::async_trait;
use reactor_api::{
    DeploymentSpec, Invocation, InvokeError, InvokeFailure, InvokeOutcome, Runtime, RuntimeWorker,
};
use std::path::Path;
use std::sync::Arc;

pub struct MaterializeOnly {
    inner: Arc<dyn RuntimeWorker>,
}

impl MaterializeOnly {
    pub fn new(inner: Arc<dyn RuntimeWorker>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl RuntimeWorker for MaterializeOnly {
    fn runtime(&self) -> Runtime {
        self.inner.runtime()
    }

    async fn materialize(&self, spec: &DeploymentSpec, bundle_dir: &Path) -> Result<(), String> {
        self.inner.materialize(spec, bundle_dir).await
    }

    /// Worker services prepare live deployments themselves from the routing table.
    async fn prepare(&self, _spec: &DeploymentSpec) -> Result<(), InvokeError> {
        Ok(())
    }

    async fn invoke(&self, _invocation: Invocation) -> Result<InvokeOutcome, InvokeFailure> {
        Err(InvokeError::Unavailable {
            message: "the control plane runs no functions".into(),
        }
        .into())
    }
}
