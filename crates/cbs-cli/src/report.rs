//! How a failed command's error reaches the user: every cause once, and no backtrace unless
//! `-v` asks for it.
//!
//! Two things make a raw `{e:#}` noisy. candle captures a backtrace into its errors whenever
//! `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) is set, and prints it as part of the message;
//! the libraries often embed a candle error's text in their own message, so the frames travel
//! inside plain strings. And a typed error that both shows its cause (`"{path}: {source}"`) and
//! reports it as its `source()` makes the chain print that cause twice.

use std::fmt::Write as _;

/// The text printed after `error: `: the chain of causes joined by `: `, each segment stripped
/// of backtraces, a segment dropped when an earlier one already contains its text. With
/// `verbose`, the backtraces that were cut out follow the message.
pub fn render(e: &anyhow::Error, verbose: bool) -> String {
    let mut segments: Vec<String> = Vec::new();
    let mut traces: Vec<String> = Vec::new();
    for cause in e.chain() {
        let (text, mut cut) = strip_backtraces(&display_without_backtrace(cause, &mut traces));
        traces.append(&mut cut);
        let text = text.trim();
        if text.is_empty() || segments.iter().any(|s| s.contains(text)) {
            continue;
        }
        segments.push(text.to_string());
    }
    let mut out = segments.join(": ");
    if verbose {
        for trace in &traces {
            let _ = write!(out, "\n\nbacktrace:\n{trace}");
        }
    }
    out
}

/// `cause`'s message; when it is candle's backtrace wrapper, the wrapped error's message, with
/// the backtrace set aside in `traces`.
fn display_without_backtrace(
    cause: &(dyn std::error::Error + 'static),
    traces: &mut Vec<String>,
) -> String {
    let mut e = match cause.downcast_ref::<candle_core::Error>() {
        Some(e) => e,
        None => return cause.to_string(),
    };
    while let candle_core::Error::WithBacktrace { inner, backtrace } = e {
        traces.push(backtrace.to_string());
        e = inner;
    }
    e.to_string()
}

/// `text` without the backtraces embedded in it, and the backtraces. A backtrace is std's
/// rendering: numbered frame lines from `0:` on (`   0: candle_core::error::Error::bt`), each
/// optionally followed by its location (`             at /path/file.rs:12:5`), possibly under a
/// `stack backtrace:` heading.
fn strip_backtraces(text: &str) -> (String, Vec<String>) {
    let mut kept: Vec<&str> = Vec::new();
    let mut traces: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let starts = trimmed.starts_with("0: ") || trimmed == "stack backtrace:";
        let continues = current.is_some()
            && (is_frame(trimmed) || trimmed.starts_with("at ") || trimmed.starts_with("note: "));
        if starts || continues {
            let trace = current.get_or_insert_with(String::new);
            trace.push_str(line);
            trace.push('\n');
            continue;
        }
        if let Some(trace) = current.take() {
            traces.push(trace);
        }
        kept.push(line);
    }
    traces.extend(current);
    (kept.join("\n"), traces)
}

/// `N: …` with a frame number `N`.
fn is_frame(trimmed: &str) -> bool {
    trimmed
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "   0: candle_core::error::Error::bt\n             at \
                         /r/candle-core/src/error.rs:260:36\n   1: <T as Into<U>>::into\n   \
                         2: main\n             at /r/main.rs:3:5\n";

    #[test]
    fn an_embedded_backtrace_is_cut_and_kept_for_verbose() {
        let text = format!("model.safetensors: header too large\n{TRACE}");
        let (kept, traces) = strip_backtraces(&text);
        assert_eq!(kept, "model.safetensors: header too large");
        assert_eq!(traces, [TRACE]);
        // Text after the frames stays.
        let (kept, _) = strip_backtraces(&format!("a\nstack backtrace:\n{TRACE}b: c"));
        assert_eq!(kept, "a\nb: c");
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(cbs_run::RunError::Io {
            path: "x.toml".into(),
            source: io,
        })
        .context("reading the config");
        assert_eq!(
            render(&e, false),
            "reading the config: x.toml: No such file"
        );
    }

    #[test]
    fn candle_backtraces_show_only_with_verbose() {
        let inner = candle_core::Error::Msg("shape mismatch".into());
        let e = anyhow::Error::new(candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        })
        .context("sampling");
        assert_eq!(render(&e, false), "sampling: shape mismatch");
        let verbose = render(&e, true);
        assert!(
            verbose.starts_with("sampling: shape mismatch\n\nbacktrace:\n"),
            "{verbose}"
        );
        assert!(verbose.contains("0: "), "{verbose}");
    }
}
