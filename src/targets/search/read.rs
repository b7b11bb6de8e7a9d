//! DoGet: every document of some indices, in put and row order, decoded with the recorded
//! schema. Each index is pinned with a point in time when the read opens (a scroll where the
//! cluster has no point-in-time API), so a commit during the read does not change what it
//! returns.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use elasticsearch::http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tracing::warn;

use super::Flavour;
use super::cluster::{Cluster, KEEP_ALIVE};
use super::mapping::{ORDER_FIELD, restore, wire_schema};
use crate::error::{Error, Result};
use crate::targets::SendableBatchStream;
use crate::targets::util::async_stream_batches;

/// Documents per page (and per batch returned).
const PAGE_SIZE: usize = 10_000;

fn sort() -> Value {
    json!([
        { format!("{ORDER_FIELD}.put"): "asc" },
        { format!("{ORDER_FIELD}.row"): "asc" },
    ])
}

enum Cursor {
    Pit { id: String, after: Option<Value> },
    Scroll { id: String, first: Option<Bytes> },
}

struct IndexReader {
    index: String,
    cursor: Cursor,
    done: bool,
}

pub(super) async fn read(
    cluster: Arc<Cluster>,
    indices: Vec<String>,
    schema: SchemaRef,
) -> Result<SendableBatchStream> {
    let source: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let query = json!({
        "size": PAGE_SIZE,
        "sort": sort(),
        "_source": { "includes": source },
        "track_total_hits": false,
    });
    let mut readers = Vec::new();
    for index in indices {
        readers.push(open(&cluster, index, &query).await?);
    }
    Ok(Box::pin(async_stream_batches(move |tx| async move {
        for mut reader in readers {
            loop {
                match next_page(&cluster, &mut reader, &query, &schema).await {
                    Ok(Some(batch)) => tx.send(Ok(batch)).await?,
                    Ok(None) => break,
                    Err(e) => {
                        close(&cluster, &reader).await;
                        tx.send(Err(e)).await?;
                        return Ok(());
                    }
                }
            }
            close(&cluster, &reader).await;
        }
        Ok(())
    })))
}

/// Pins the index as it is now.
async fn open(cluster: &Cluster, index: String, query: &Value) -> Result<IndexReader> {
    let path = match cluster.flavour {
        Flavour::Elasticsearch => format!("/{index}/_pit?keep_alive={KEEP_ALIVE}"),
        Flavour::OpenSearch => format!("/{index}/_search/point_in_time?keep_alive={KEEP_ALIVE}"),
    };
    let action = "opening a point in time";
    let reply = cluster
        .send(Method::Post, &path, None, false, action)
        .await?;
    if reply.status.is_success() {
        let body = reply.json();
        if let Some(id) = body
            .get("id")
            .or_else(|| body.get("pit_id"))
            .and_then(Value::as_str)
        {
            return Ok(IndexReader {
                index,
                cursor: Cursor::Pit {
                    id: id.to_string(),
                    after: None,
                },
                done: false,
            });
        }
    } else if !matches!(reply.status.as_u16(), 400 | 404 | 405) {
        return Err(cluster.refused(action, &reply));
    }
    // No point-in-time API: a scroll pins the index with its first page.
    let action = "opening a scroll";
    let reply = cluster
        .send(
            Method::Post,
            &format!("/{index}/_search?scroll={KEEP_ALIVE}"),
            Some(Bytes::from(query.to_string())),
            false,
            action,
        )
        .await?;
    if !reply.status.is_success() {
        return Err(cluster.refused(action, &reply));
    }
    let id = reply.json()["_scroll_id"]
        .as_str()
        .ok_or_else(|| Error::storage(cluster.target(), action, "the reply has no _scroll_id"))?
        .to_string();
    Ok(IndexReader {
        index,
        cursor: Cursor::Scroll {
            id,
            first: Some(reply.body),
        },
        done: false,
    })
}

async fn next_page(
    cluster: &Cluster,
    reader: &mut IndexReader,
    query: &Value,
    schema: &SchemaRef,
) -> Result<Option<RecordBatch>> {
    if reader.done {
        return Ok(None);
    }
    let action = "reading documents";
    let body = match &mut reader.cursor {
        Cursor::Pit { id, after } => {
            let mut page = query.clone();
            page["pit"] = json!({ "id": id, "keep_alive": KEEP_ALIVE });
            if let Some(after) = after {
                page["search_after"] = after.clone();
            }
            fetch(cluster, "/_search", page, action).await?
        }
        Cursor::Scroll { id, first } => match first.take() {
            Some(body) => body,
            None => {
                let page = json!({ "scroll": KEEP_ALIVE, "scroll_id": id });
                fetch(cluster, "/_search/scroll", page, action).await?
            }
        },
    };
    let schema = Arc::clone(schema);
    let target = cluster.target().to_string();
    let index = reader.index.clone();
    let page = tokio::task::spawn_blocking(move || decode(&body, &schema))
        .await?
        .map_err(|e| Error::format(&target, format!("read documents of index {index}"), e))?;
    match &mut reader.cursor {
        Cursor::Pit { id, after } => {
            if let Some(new_id) = page.pit_id {
                *id = new_id;
            }
            *after = page.last_sort;
        }
        Cursor::Scroll { id, .. } => {
            if let Some(new_id) = page.scroll_id {
                *id = new_id;
            }
        }
    }
    if page.batch.num_rows() < PAGE_SIZE {
        reader.done = true;
    }
    Ok((page.batch.num_rows() > 0).then_some(page.batch))
}

async fn fetch(cluster: &Cluster, path: &str, body: Value, action: &str) -> Result<Bytes> {
    let reply = cluster
        .send(
            Method::Post,
            path,
            Some(Bytes::from(body.to_string())),
            false,
            action,
        )
        .await?;
    if !reply.status.is_success() {
        return Err(cluster.refused(action, &reply));
    }
    Ok(reply.body)
}

async fn close(cluster: &Cluster, reader: &IndexReader) {
    let (path, body) = match (&reader.cursor, cluster.flavour) {
        (Cursor::Pit { id, .. }, Flavour::Elasticsearch) => ("/_pit", json!({ "id": id })),
        (Cursor::Pit { id, .. }, Flavour::OpenSearch) => {
            ("/_search/point_in_time", json!({ "pit_id": [id] }))
        }
        (Cursor::Scroll { id, .. }, _) => ("/_search/scroll", json!({ "scroll_id": [id] })),
    };
    let closed = cluster
        .send(
            Method::Delete,
            path,
            Some(Bytes::from(body.to_string())),
            false,
            "closing a read",
        )
        .await;
    if let Err(e) = closed {
        warn!(index = %reader.index, error = %e, "could not close a point in time or scroll");
    }
}

#[derive(Deserialize)]
struct SearchReply<'a> {
    #[serde(default)]
    pit_id: Option<String>,
    #[serde(default, rename = "_scroll_id")]
    scroll_id: Option<String>,
    #[serde(borrow)]
    hits: Hits<'a>,
}

#[derive(Deserialize)]
struct Hits<'a> {
    #[serde(borrow)]
    hits: Vec<Hit<'a>>,
}

#[derive(Deserialize)]
struct Hit<'a> {
    #[serde(borrow, rename = "_source")]
    source: Option<&'a RawValue>,
    #[serde(default)]
    sort: Option<Value>,
}

struct Page {
    batch: RecordBatch,
    pit_id: Option<String>,
    scroll_id: Option<String>,
    last_sort: Option<Value>,
}

/// One search reply as a batch of `schema`.
fn decode(body: &[u8], schema: &SchemaRef) -> Result<Page, String> {
    let reply: SearchReply<'_> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable search reply: {e}"))?;
    let mut lines = Vec::with_capacity(body.len());
    for hit in &reply.hits.hits {
        lines.extend_from_slice(hit.source.map(RawValue::get).unwrap_or("{}").as_bytes());
        lines.push(b'\n');
    }
    let mut decoder = arrow_json::ReaderBuilder::new(wire_schema(schema))
        .with_batch_size(reply.hits.hits.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.decode(&lines).map_err(|e| e.to_string())?;
    let batch = match decoder.flush().map_err(|e| e.to_string())? {
        Some(batch) => restore(batch, schema)?,
        None => RecordBatch::new_empty(Arc::clone(schema)),
    };
    Ok(Page {
        batch,
        pit_id: reply.pit_id,
        scroll_id: reply.scroll_id,
        last_sort: reply.hits.hits.last().and_then(|h| h.sort.clone()),
    })
}
