//! Sharing the encoding of one file out over a few threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use arrow_array::RecordBatch;

use crate::targets::lock;

/// Batches with fewer rows are encoded on the calling thread: starting threads would cost
/// more than it saves.
pub(crate) const PARALLEL_MIN_ROWS: usize = 4096;

/// A target's `threads` setting, or the machine's cores.
pub(crate) fn threads(setting: Option<usize>) -> Result<usize, String> {
    match setting {
        Some(0) => Err("threads must be at least 1".to_string()),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// How many threads a batch of `rows` rows is worth.
pub(crate) fn threads_for(rows: usize, threads: usize) -> usize {
    if rows < PARALLEL_MIN_ROWS { 1 } else { threads }
}

/// Runs `work(i)` for every `i` in `0..n` on up to `threads` threads (the caller's included),
/// each thread taking the next index; stops early after the first error, which it returns.
pub(crate) fn for_each_parallel<E: Send>(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let threads = threads.min(n);
    if threads <= 1 {
        return (0..n).try_for_each(work);
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let run = || -> Result<(), E> {
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            if let Err(e) = work(i) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let run = &run;
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(run)).collect();
        let mut result = run();
        for helper in helpers {
            let helped = helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(helped);
        }
        result
    })
}

/// Encodes `batch` as up to `threads` consecutive row slices at once; returns each slice's
/// bytes, in row order. `encode` is told whether its slice is the first.
pub(crate) fn encode_row_slices<E: Send>(
    batch: &RecordBatch,
    threads: usize,
    encode: impl Fn(&RecordBatch, bool) -> Result<Vec<u8>, E> + Sync,
) -> Result<Vec<Vec<u8>>, E> {
    let rows = batch.num_rows();
    let slices = threads_for(rows, threads).max(1);
    let per_slice = rows.div_ceil(slices);
    let outputs: Vec<Mutex<Vec<u8>>> = (0..slices).map(|_| Default::default()).collect();
    for_each_parallel(slices, slices, |i| {
        let start = (i * per_slice).min(rows);
        let end = ((i + 1) * per_slice).min(rows);
        let bytes = encode(&batch.slice(start, end - start), i == 0)?;
        *lock(&outputs[i]) = bytes;
        Ok(())
    })?;
    Ok(outputs
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(PoisonError::into_inner))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Int64Array;

    use super::*;

    #[test]
    fn an_error_on_any_thread_is_returned() {
        let result = for_each_parallel(1000, 2, |i| {
            if i == 10 {
                return Err(format!("item {i} failed"));
            }
            Ok(())
        });
        assert_eq!(result.unwrap_err(), "item 10 failed");
    }

    #[test]
    fn row_slices_cover_every_row_once_in_order() {
        let column = Arc::new(Int64Array::from_iter_values(0..10_001));
        let batch = RecordBatch::try_from_iter([("n", column as _)]).unwrap();
        let parts = encode_row_slices(&batch, 3, |slice, first| {
            let values = slice
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let mut out = if first {
                b"first:".to_vec()
            } else {
                Vec::new()
            };
            for v in values.values() {
                out.extend_from_slice(format!("{v},").as_bytes());
            }
            Ok::<_, String>(out)
        })
        .unwrap();
        assert_eq!(parts.len(), 3);
        let joined = String::from_utf8(parts.concat()).unwrap();
        let expected: String = (0..10_001).map(|v| format!("{v},")).collect();
        assert_eq!(joined, format!("first:{expected}"));
    }

    #[test]
    fn the_threads_setting_defaults_to_the_cores_and_refuses_zero() {
        assert_eq!(threads(Some(3)), Ok(3));
        assert_eq!(
            threads(Some(0)),
            Err("threads must be at least 1".to_string())
        );
        assert!(threads(None).unwrap() >= 1);
    }

    #[test]
    fn small_batches_stay_on_one_thread() {
        assert_eq!(threads_for(PARALLEL_MIN_ROWS - 1, 8), 1);
        assert_eq!(threads_for(PARALLEL_MIN_ROWS, 8), 8);
    }
}
