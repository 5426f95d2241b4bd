//! Progress bars (the libraries report through callbacks; only the binary draws).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// [`bar`] on the process that reports (rank 0 of a data-parallel group), hidden elsewhere.
pub fn bar_if(shown: bool, total: u64, unit: &str) -> ProgressBar {
    if shown {
        bar(total, unit)
    } else {
        ProgressBar::hidden()
    }
}

pub fn bar(total: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}<{{eta_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}) {{msg}}"
        ))
        .expect("valid template"),
    );
    pb
}
