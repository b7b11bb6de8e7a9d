//! The discard target: accepts puts, counts what arrives, keeps nothing. It measures the Flight
//! transport and Quiver's put path without any storage cost (the "transport ceiling" in
//! docs/benchmarks.md). It exists only when configured (`kind = "discard"`); reads of its
//! assets fail with `FAILED_PRECONDITION`.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use async_trait::async_trait;

use crate::asset::{AssetKey, Partition};
use crate::catalog::PendingPut;
use crate::error::{Error, Result};
use crate::protocol::Mode;
use crate::targets::TargetKind;
use crate::targets::{
    AssetWriter, DeleteRequest, ReadRequest, SendableBatchStream, Target, WriteRequest,
    WriteSummary, partition_location,
};

pub struct DiscardTarget {
    name: String,
}

impl DiscardTarget {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl Target for DiscardTarget {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "discard"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Overwrite, Mode::Append]
    }

    fn location(&self, asset: &AssetKey, partition: Option<&Partition>) -> String {
        partition_location(format!("discard://{}/{asset}", self.name), partition)
    }

    async fn begin(&self, req: &WriteRequest, _schema: SchemaRef) -> Result<Box<dyn AssetWriter>> {
        Ok(Box::new(DiscardWriter {
            rows: 0,
            bytes: 0,
            location: self.location(&req.asset, req.partition.as_ref()),
        }))
    }

    async fn read(&self, req: &ReadRequest) -> Result<SendableBatchStream> {
        Err(Error::failed_precondition(format!(
            "target '{}' discards what it is sent, so asset '{}' has nothing to read; \
             put it to a storing target",
            self.name, req.asset
        )))
    }

    async fn delete(&self, _req: &DeleteRequest) -> Result<()> {
        Ok(())
    }

    async fn healthcheck(&self) -> Result<()> {
        Ok(())
    }

    /// Nothing was stored, so nothing can be half-stored: the put is recorded as it was sent.
    async fn resolve(&self, put: &PendingPut) -> Result<Option<WriteSummary>> {
        Ok(Some(WriteSummary {
            rows: put.commit.rows,
            bytes: put.commit.bytes,
            location: put.commit.location.clone(),
            total_rows: None,
        }))
    }
}

struct DiscardWriter {
    rows: u64,
    bytes: u64,
    location: String,
}

#[async_trait]
impl AssetWriter for DiscardWriter {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.bytes += batch.get_array_memory_size() as u64;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<WriteSummary> {
        Ok(WriteSummary {
            rows: self.rows,
            bytes: self.bytes,
            location: self.location,
            total_rows: None,
        })
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// The discard target has no settings.
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscardConfig {}

/// The `discard` kind.
pub struct Discard;

impl TargetKind for Discard {
    type Config = DiscardConfig;

    fn unshareable(_config: &DiscardConfig) -> Option<String> {
        None
    }

    fn build(name: &str, _config: &DiscardConfig) -> Result<Arc<dyn Target>> {
        Ok(Arc::new(DiscardTarget::new(name)))
    }
}
