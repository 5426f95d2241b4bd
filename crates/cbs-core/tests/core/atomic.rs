use std::io::Write;

use cbs_core::atomic::{self, temp_path};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_text_replaces_content_and_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    atomic::write_text(&p, "a = 1\n").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 1\n");
    atomic::write_text(&p, "a = 2\n").unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "a = 2\n");
    assert_eq!(entries(dir.path()), ["config.toml"]);
}

#[test]
fn failing_writer_keeps_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("samples.npz");
    atomic::write_bytes(&p, b"old").unwrap();
    let err = atomic::write_with(&p, |w| {
        w.write_all(b"partial new content")?;
        Err::<(), _>(std::io::Error::other("encoder failed"))
    })
    .unwrap_err();
    assert_eq!(err.path, p);
    assert!(err.to_string().contains("encoder failed"), "{err}");
    assert!(err.to_string().contains("samples.npz"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    assert_eq!(entries(dir.path()), ["samples.npz"]);
}

#[test]
fn failing_path_writer_keeps_the_old_content_and_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    atomic::write_bytes(&p, b"old").unwrap();
    let err = atomic::write_with_path(&p, |tmp| {
        std::fs::write(tmp, b"half")?;
        Err::<(), Box<dyn std::error::Error + Send + Sync>>("out of disk".into())
    })
    .unwrap_err();
    assert!(err.to_string().contains("out of disk"), "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    assert_eq!(entries(dir.path()), ["model.safetensors"]);
}

#[test]
fn content_is_invisible_until_complete() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grid.png");
    atomic::write_with(&p, |w| -> std::io::Result<()> {
        w.write_all(b"first half ")?;
        w.flush()?;
        // Mid-write, the target does not exist yet (and would hold the old content if it did).
        assert!(!p.exists());
        w.write_all(b"second half")
    })
    .unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"first half second half");
    assert!(!temp_path(&p).exists());
}

#[test]
fn write_with_path_hands_the_temporary_path_next_to_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latest");
    atomic::write_with_path(&p, |tmp| {
        assert_eq!(tmp.parent(), p.parent());
        assert_ne!(tmp, p.as_path());
        std::fs::write(tmp, "step-00000010")
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&p).unwrap(), "step-00000010");
    assert_eq!(entries(dir.path()), ["latest"]);
}

#[test]
fn a_missing_directory_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nowhere/splits.toml");
    let err = atomic::write_text(&p, "x").unwrap_err();
    assert_eq!(err.path, p);
    assert!(err.to_string().contains("nowhere/splits.toml"), "{err}");
}

#[test]
fn commit_dir_replaces_a_previous_directory() {
    let dir = tempfile::tempdir().unwrap();
    let fin = dir.path().join("step-1");
    std::fs::create_dir(&fin).unwrap();
    std::fs::write(fin.join("stale"), "x").unwrap();
    let tmp = dir.path().join("step-1.tmp");
    std::fs::create_dir(&tmp).unwrap();
    atomic::write_text(&tmp.join("state.json"), "{}").unwrap();
    atomic::commit_dir(&tmp, &fin).unwrap();
    assert_eq!(entries(dir.path()), ["step-1"]);
    assert_eq!(entries(&fin), ["state.json"]);
}
