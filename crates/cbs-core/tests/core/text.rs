//! Small text inputs: read whole when they are small regular UTF-8 files, refused with the
//! reason otherwise — never a hang on a FIFO or unbounded memory on `/dev/zero`.

use std::path::Path;

use cbs_core::text::{read_text, read_text_capped, TextError};

#[test]
fn a_small_file_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[train]\nsteps = 3\n").unwrap();
    assert_eq!(read_text(&p).unwrap(), "[train]\nsteps = 3\n");
}

#[test]
fn endless_and_oversized_inputs_stop_at_the_cap() {
    let e = read_text_capped(Path::new("/dev/zero"), 1 << 16).unwrap_err();
    assert!(
        matches!(e, TextError::TooLarge { limit, .. } if limit == 1 << 16),
        "{e}"
    );
    assert!(
        e.to_string().contains("/dev/zero: larger than 65536 bytes"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.json");
    std::fs::write(&p, vec![b' '; 1001]).unwrap();
    assert!(matches!(
        read_text_capped(&p, 1000),
        Err(TextError::TooLarge { .. })
    ));
    assert!(read_text_capped(&p, 1001).is_ok());
}

#[test]
fn directories_fifos_and_binary_files_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let e = read_text(dir.path()).unwrap_err().to_string();
    assert!(e.contains("is a directory, not a file"), "{e}");
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        // Opening a FIFO for reading would block until a writer came: refused before that.
        let e = read_text(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
    }
    let bin = dir.path().join("x.toml");
    std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
    assert!(matches!(read_text(&bin), Err(TextError::NotUtf8 { .. })));
    let e = read_text(&dir.path().join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.toml") && e.contains("No such file"),
        "{e}"
    );
}
