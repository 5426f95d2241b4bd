//! Config values far beyond any real run are errors naming the field (never an allocation
//! that aborts the process or a loop that spins for minutes), and malformed arrays are not
//! silently truncated.

use std::path::Path;

use cbs_run::TrainConfig;

fn parse(extra_model: &str, extra_data: &str, extra_train: &str) -> cbs_run::Result<TrainConfig> {
    let text = format!(
        "[model]\npreset = \"sit-nano-4\"\n{extra_model}\n[data]\n{extra_data}\n[train]\n{extra_train}\n"
    );
    let cfg = TrainConfig::from_toml(&text, Path::new("c.toml"))?;
    cfg.validate()?;
    // What training does next: fit the preset to the data (Fashion-MNIST's 1×32×32, 10 classes).
    cfg.model
        .resolve(&[1, 32, 32], 10)
        .map_err(|e| cbs_run::RunError::Invalid {
            field: "model",
            value: String::new(),
            expected: e.to_string(),
        })?;
    Ok(cfg)
}

fn err(extra_model: &str, extra_data: &str, extra_train: &str) -> String {
    parse(extra_model, extra_data, extra_train)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn huge_values_name_their_field() {
    assert!(parse("", "", "").is_ok());
    let e = err("", "", "batch_size = 1000000000000000000");
    assert!(e.contains("train.batch_size") && e.contains("65536"), "{e}");
    let e = err("", "", "batch_size = 1000000000");
    assert!(e.contains("train.batch_size"), "{e}");
    let e = err("num_classes = 1000000000", "", "");
    assert!(
        e.contains("model.num_classes") && e.contains("1048576"),
        "{e}"
    );
    let e = err("image_size = 1000000000", "", "");
    assert!(e.contains("model.image_size"), "{e}");
    let e = err(
        "",
        "source = \"gmm\"\ngmm = \"m.json\"\nnum_samples = 1000000000000",
        "",
    );
    assert!(e.contains("data.num_samples"), "{e}");
    let e = err(
        "",
        "source = \"gmm\"\ngmm = \"m.json\"\nnum_samples = 0",
        "",
    );
    assert!(
        e.contains("data.num_samples") && e.contains("from 1"),
        "{e}"
    );
    let e = err(
        "",
        "source = \"image_folder\"\ndir = \"x\"\nimage_size = 1000000000",
        "",
    );
    assert!(e.contains("data.image_size"), "{e}");
}

#[test]
fn arrays_of_the_wrong_length_are_refused() {
    let e = err("", "", "betas = [0.9, 0.99, 0.5]");
    assert!(e.contains("betas"), "{e}");
    let e = err("", "", "t_range = [0.0]");
    assert!(e.contains("t_range"), "{e}");
}
