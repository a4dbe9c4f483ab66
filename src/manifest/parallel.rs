//! Parsing manifest files on every core: files are independent until the checks across them,
//! so each is parsed and validated on whichever thread is free, and the results are kept in
//! file order (diagnostics come out exactly as from one thread).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most threads used (a manifest directory rarely has enough files to keep more busy).
const MAX_THREADS: usize = 8;

/// `parse` applied to every item, on up to [`MAX_THREADS`] threads; results in item order.
pub(super) fn map_in_order<I: Send, O: Send>(
    items: Vec<I>,
    parse: impl Fn(I) -> O + Sync,
) -> Vec<O> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_THREADS)
        .min(items.len());
    if threads <= 1 {
        return items.into_iter().map(parse).collect();
    }
    let count = items.len();
    let items: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let results: Vec<Mutex<Option<O>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let at = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(at) else { break };
                    let item = item.lock().expect("not poisoned").take();
                    if let Some(item) = item {
                        let out = parse(item);
                        *results[at].lock().expect("not poisoned") = Some(out);
                    }
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("not poisoned")
                .expect("every item was parsed")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_of_the_items() {
        let items: Vec<usize> = (0..1000).collect();
        let out = map_in_order(items, |i| i * 2);
        assert_eq!(out, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        assert!(map_in_order(Vec::<usize>::new(), |i| i).is_empty());
    }
}
