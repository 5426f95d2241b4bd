//! The parallel loops on candle's worker threads: every index once, chunks in place, results
//! in order, nesting inline.

use std::sync::atomic::{AtomicUsize, Ordering};

use cbs_kernels::par;

#[test]
fn for_each_visits_every_index_once() {
    for n in [0, 1, 2, 3, 17, 1000] {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        par::for_each(n, |i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        let counts: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        assert!(counts.iter().all(|&c| c == 1), "n = {n}: {counts:?}");
    }
}

#[test]
fn chunks_cover_the_buffer_with_a_short_last_chunk() {
    let mut a = vec![0usize; 103];
    let mut b = vec![0u32; 2 * 11];
    par::chunks_mut2(&mut a, 10, &mut b, 2, |i, ca, cb| {
        assert_eq!(ca.len(), if i == 10 { 3 } else { 10 }, "chunk {i}");
        ca.iter_mut().enumerate().for_each(|(j, v)| *v = i * 10 + j);
        cb.fill(i as u32);
    });
    assert_eq!(a, (0..103).collect::<Vec<_>>());
    let want: Vec<u32> = (0..11).flat_map(|i| [i, i]).collect();
    assert_eq!(b, want);
}

#[test]
#[should_panic(expected = "chunk counts differ")]
fn chunks_mut2_refuses_mismatched_buffers() {
    let (mut a, mut b) = (vec![0f32; 10], vec![0f32; 10]);
    par::chunks_mut2(&mut a, 5, &mut b, 2, |_, _, _| {});
}

#[test]
fn map_keeps_index_order_and_nested_loops_run_inline() {
    let out = par::map(64, |i| {
        // A loop inside a loop body must not wait for the pool it is running on.
        let inner = par::map(8, |j| i * 8 + j);
        inner.iter().sum::<usize>()
    });
    let want: Vec<usize> = (0..64).map(|i| (0..8).map(|j| i * 8 + j).sum()).collect();
    assert_eq!(out, want);
    let mut seen = vec![0usize; par::threads()];
    par::chunks_mut(&mut seen, 1, |t, s| s[0] = t + 1);
    assert!(seen.iter().all(|&s| s > 0));
}

#[test]
fn build_zeroes_each_chunk_before_filling_it() {
    // Large enough to run on several threads; every third element left to the zeroing.
    let v = par::build(100_003, 7, 1000, 0.0f32, |i, c| {
        for (j, x) in c.iter_mut().enumerate() {
            if j % 3 != 0 {
                *x = (i * 1000 + j) as f32;
            }
        }
    });
    assert_eq!(v.len(), 100_003);
    assert!(v.capacity() >= 100_010);
    for (k, &x) in v.iter().enumerate() {
        let want = if (k % 1000) % 3 == 0 { 0.0 } else { k as f32 };
        assert_eq!(x, want, "element {k}");
    }
    // A fill value whose bytes are not all zero takes the element-by-element path.
    let (a, b) = par::build2((10, 4, -1i64), (6, 2, 7u8), |i, a, b| {
        a[0] = i as i64;
        b[0] = i as u8;
    });
    assert_eq!(a, [0, -1, -1, -1, 1, -1, -1, -1, 2, -1]);
    assert_eq!(b, [0, 7, 1, 7, 2, 7]);
}

#[test]
fn a_panicking_loop_body_leaves_later_loops_parallel() {
    let caught = std::panic::catch_unwind(|| {
        par::for_each(4, |i| {
            if i == 0 {
                panic!("body 0 fails");
            }
        })
    });
    assert!(caught.is_err(), "the body's panic reaches the caller");
    if par::threads() < 2 {
        return;
    }
    // Had the nesting flag stayed set, this loop would run inline on this thread only.
    let ids = std::sync::Mutex::new(std::collections::HashSet::new());
    par::for_each(40, |_| {
        std::thread::sleep(std::time::Duration::from_millis(2));
        ids.lock().unwrap().insert(std::thread::current().id());
    });
    assert!(
        ids.into_inner().unwrap().len() > 1,
        "the loop ran on one thread"
    );
}
