//! Files built to exhaust, crash or hijack a reader: each is a clean error naming the file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cbs_torch::write::{legacy_with_pickle, zip_with_pickle};
use cbs_torch::{Limit, Limits, TorchError, TorchFile};

use crate::pickles::P;

fn zip_file(dir: &Path, name: &str, pkl: &[u8], storages: &[(&str, usize)]) -> PathBuf {
    let path = dir.join(name);
    let storages: Vec<(String, Vec<u8>)> = storages
        .iter()
        .map(|&(k, n)| (k.to_string(), vec![0u8; n]))
        .collect();
    zip_with_pickle(&path, pkl, &storages).unwrap();
    path
}

fn open_err(path: &Path) -> TorchError {
    match TorchFile::open(path) {
        Ok(f) => panic!(
            "{} opened with {} tensors",
            path.display(),
            f.tensors().len()
        ),
        Err(e) => e,
    }
}

fn assert_msg(e: &TorchError, path: &Path, parts: &[&str]) {
    let msg = e.to_string();
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in: {msg}");
    }
}

#[test]
fn memo_reuse_does_not_multiply_memory() {
    // Each level is a list holding the previous level twice, through the memo: 2^200 leaves.
    let mut p = P::proto2().ops(b"]q\x00");
    for _ in 0..200 {
        p = p.ops(b"(h\x00h\x00lq\x00");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = zip_file(dir.path(), "bomb.pth", &p.stop(), &[]);
    assert!(std::fs::metadata(&path).unwrap().len() < 2048);
    let t = Instant::now();
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::Cells | Limit::NameBytes,
                ..
            }
        ),
        "{e}"
    );
    assert_msg(&e, &path, &["exceeds the limit"]);
    // Bounded work, not 2^200 steps (a generous bound: it is a debug build).
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000;
    // A list nested a million deep: EMPTY_LIST n times, then APPEND n−1 times.
    let mut b = vec![0x80, 2];
    b.extend(std::iter::repeat_n(b']', n));
    b.extend(std::iter::repeat_n(b'a', n - 1));
    b.push(b'.');
    let path = zip_file(dir.path(), "deep-list.pth", &b, &[]);
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::Depth,
                ..
            }
        ),
        "{e}"
    );
    // A million open MARKs.
    let mut b = vec![0x80, 2];
    b.extend(std::iter::repeat_n(b'(', n));
    b.push(b'.');
    let path = zip_file(dir.path(), "deep-mark.pth", &b, &[]);
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::Depth,
                ..
            }
        ),
        "{e}"
    );
    assert_msg(&e, &path, &["nesting depth", "at byte"]);
    // The same through the legacy layout.
    let path = dir.path().join("deep-legacy.pth");
    let mut b = vec![0x80, 2];
    b.extend(std::iter::repeat_n(b']', n));
    b.extend(std::iter::repeat_n(b'a', n - 1));
    b.push(b'.');
    legacy_with_pickle(&path, &b, &[], &[]).unwrap();
    let e = open_err(&path);
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::Depth,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn malformed_rebuild_arguments_are_refused_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "negative-offset",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, -1, &[2], &[1]))
                .stop(),
            "storage offset is not a non-negative integer",
        ),
        (
            "negative-stride",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 0, &[2], &[-1]))
                .stop(),
            "stride is not a non-negative integer",
        ),
        (
            "wrapping-stride",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 0, &[5], &[1 << 62]))
                .stop(),
            "extent overflows",
        ),
        (
            "huge-size",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 0, &[1 << 62], &[1]))
                .stop(),
            "overflows",
        ),
        (
            "past-storage",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 1, &[2, 2], &[2, 1]))
                .stop(),
            "reach element 4 of a storage of 4 elements",
        ),
        (
            "zero-stride-expansion",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 0, &[1 << 30, 1 << 30], &[0, 0]))
                .stop(),
            "exceeds the limit",
        ),
        (
            "zero-stride-expansion-below-the-limit",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 0, &[1 << 20, 1 << 10], &[0, 0]))
                .stop(),
            "expands 16 stored bytes to 4294967296",
        ),
        (
            "rank-mismatch",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 4, 0, &[2, 2], &[1]))
                .stop(),
            "size has 2 dimensions, stride 1",
        ),
        (
            "two-arguments",
            P::proto2()
                .dict1("w", |p| {
                    p.global("torch._utils", "_rebuild_tensor_v2")
                        .op(b'(')
                        .storage("0", 4)
                        .int(0)
                        .op(b't')
                        .op(b'R')
                })
                .stop(),
            "_rebuild_tensor with 2 arguments",
        ),
        (
            "not-a-storage",
            P::proto2()
                .dict1("w", |p| {
                    p.global("torch._utils", "_rebuild_tensor_v2")
                        .op(b'(')
                        .int(3)
                        .int(0)
                        .ints(&[1])
                        .ints(&[1])
                        .op(b't')
                        .op(b'R')
                })
                .stop(),
            "first argument is not a storage",
        ),
        (
            "huge-storage",
            P::proto2()
                .dict1("w", |p| p.tensor("0", 1 << 60, 0, &[1], &[1]))
                .stop(),
            "exceeds the limit",
        ),
    ];
    for (name, pkl, expect) in cases {
        let path = zip_file(dir.path(), &format!("{name}.pth"), &pkl, &[("0", 16)]);
        let e = open_err(&path);
        assert_msg(&e, &path, &[expect]);
        // The same pickle in the legacy layout.
        let lpath = dir.path().join(format!("{name}-legacy.pth"));
        legacy_with_pickle(&lpath, &pkl, &["0".into()], &[(vec![0u8; 16], 4)]).unwrap();
        let e = open_err(&lpath);
        assert_msg(&e, &lpath, &[expect]);
    }
}

#[test]
fn storages_must_match_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = P::proto2()
        .dict1("w", |p| p.tensor("0", 4, 0, &[4], &[1]))
        .stop();
    let path = zip_file(dir.path(), "missing.pth", &pkl, &[]);
    assert_msg(
        &open_err(&path),
        &path,
        &["tensor `w`", "archive/data/0 is missing"],
    );
    let path = zip_file(dir.path(), "short.pth", &pkl, &[("0", 15)]);
    assert_msg(
        &open_err(&path),
        &path,
        &["holds 15 bytes", "declares 4 elements"],
    );
    let path = zip_file(dir.path(), "ok.pth", &pkl, &[("0", 16)]);
    let f = TorchFile::open(&path).unwrap();
    assert_eq!(f.load("w").unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 4]);
}

#[test]
fn code_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "os-system",
            P::proto2()
                .global("os", "system")
                .op(b'(')
                .str("touch /tmp/pwned")
                .op(b't')
                .op(b'R')
                .stop(),
            "os.system",
        ),
        (
            "stack-global-eval",
            P::proto2()
                .str("builtins")
                .str("eval")
                .op(0x93)
                .op(b'(')
                .str("1")
                .op(b't')
                .op(b'R')
                .stop(),
            "builtins.eval",
        ),
        (
            "torch-load",
            P::proto2().dict1("w", |p| p.global("torch", "load")).stop(),
            "torch.load",
        ),
        (
            "numpy-reconstruct",
            P::proto2()
                .global("numpy.core.multiarray", "_reconstruct")
                .stop(),
            "numpy.core.multiarray._reconstruct",
        ),
    ];
    for (name, pkl, global) in cases {
        let path = zip_file(dir.path(), &format!("{name}.pth"), &pkl, &[]);
        let e = open_err(&path);
        assert!(matches!(e, TorchError::Refused { .. }), "{e}");
        assert_msg(&e, &path, &["refused", global, "never executed"]);
    }
    // INST names a class and calls it in one opcode.
    let pkl = P::proto2().op(b'(').ops(b"iposix\nsystem\n").stop();
    let path = zip_file(dir.path(), "inst.pth", &pkl, &[]);
    assert_msg(&open_err(&path), &path, &["INST"]);
}

#[test]
fn small_limits_apply() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = P::proto2()
        .dict1("w", |p| p.tensor("0", 4, 0, &[4], &[1]))
        .stop();
    let path = zip_file(dir.path(), "w.pth", &pkl, &[("0", 16)]);
    let limits = Limits {
        max_tensor_bytes: 15,
        ..Limits::default()
    };
    let e = TorchFile::open_with(&path, limits).err().unwrap();
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::TensorBytes,
                value: 16,
                limit: 15,
                ..
            }
        ),
        "{e}"
    );
    let limits = Limits {
        max_pickle_bytes: 10,
        ..Limits::default()
    };
    let e = TorchFile::open_with(&path, limits).err().unwrap();
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::PickleBytes,
                ..
            }
        ),
        "{e}"
    );
    // Many memo entries.
    let mut p = P::proto2().op(b'N');
    for i in 0..100u32 {
        p = p.op(b'r').ops(&i.to_le_bytes());
    }
    let path = zip_file(dir.path(), "memo.pth", &p.stop(), &[]);
    let limits = Limits {
        max_memo: 50,
        ..Limits::default()
    };
    let e = TorchFile::open_with(&path, limits).err().unwrap();
    assert!(
        matches!(
            e,
            TorchError::Limit {
                what: Limit::Memo,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn garbage_is_not_a_torch_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("empty.pt", &b""[..]),
        ("text.pt", b"hello"),
        ("pickle-no-magic.pt", b"\x80\x02K\x01."),
        ("zip-garbage.pt", b"PK\x03\x04garbage"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_msg(&open_err(&path), &path, &[]);
    }
    let e = open_err(dir.path());
    assert_msg(&e, dir.path(), &["not a regular file"]);
}
