//! Logging set-up for every chatfeed binary: `tracing` with `RUST_LOG`-style filters, text or JSON,
//! to stderr or appended to a file of the process's own. Every line carries the process's role and
//! id: text lines start with `master-2` or `worker-4711`; JSON objects have `"role"` and `"id"`
//! fields first, on every line (not only inside a span).

use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Output format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// The name `--log-format` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

/// Puts `tag` in front of every line of the wrapped format.
struct Tagged<F> {
    tag: String,
    inner: F,
}

/// Puts `"role":…,"id":…` first in every JSON object of the wrapped format.
struct TaggedJson<F> {
    fields: String,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for TaggedJson<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{{},{rest}", self.fields),
            None => writer.write_str(&line),
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} ", self.tag)?;
        self.inner.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber, writing to stderr. `default_filter` applies when `RUST_LOG` is
/// unset. The returned span is for the caller to enter (kept for callers; the role and id are on
/// every line whatever the span).
pub fn init(
    format: LogFormat,
    default_filter: &str,
    role: &'static str,
    id: &str,
) -> tracing::Span {
    init_to(format, default_filter, role, id, None).unwrap_or_else(|_| tracing::Span::none())
}

/// Like `init`, appending to `file` when given (created with its directory if missing).
pub fn init_to(
    format: LogFormat,
    default_filter: &str,
    role: &'static str,
    id: &str,
    file: Option<&Path>,
) -> std::io::Result<tracing::Span> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let writer = match file {
        Some(path) => BoxMakeWriter::new(Mutex::new(rotating_file(
            path,
            LOG_FILE_BYTES,
            LOG_FILES_KEPT,
        )?)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    // A test binary may call this more than once: the first subscriber stays.
    if tracing::subscriber::set_global_default(subscriber(format, filter, role, id, writer)).is_ok()
        && file.is_some()
    {
        log_panics();
    }
    Ok(tracing::Span::none())
}

/// A panic, on any thread, is written to the log as well as to stderr (which a process started
/// in the background sends to a file of its own): the log then says why the process or one of
/// its tasks ended, beside what it was doing.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), panic = %info, %backtrace, "panicked");
        default(info);
    }));
}

/// A log file is rotated once it passes this size: a day of a busy member's logs at info.
pub const LOG_FILE_BYTES: usize = 64 << 20;
/// Rotated files kept beside the current one (`.1` the newest): at most about 320 MB a process.
pub const LOG_FILES_KEPT: usize = 4;

/// `path`, appended to, rotated once it passes `bytes`: the current file keeps its name, the
/// older ones become `path.1` (newest) to `path.<kept>`; the oldest beyond is deleted.
pub fn rotating_file(
    path: &Path,
    bytes: usize,
    kept: usize,
) -> std::io::Result<file_rotate::FileRotate<file_rotate::suffix::AppendCount>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Fails here, with the reason, when the file cannot be written (the crate would panic).
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(file_rotate::FileRotate::new(
        path,
        file_rotate::suffix::AppendCount::new(kept),
        file_rotate::ContentLimit::BytesSurpassed(bytes.max(1)),
        file_rotate::compression::Compression::None,
        None,
    ))
}

/// The subscriber `init_to` installs.
fn subscriber(
    format: LogFormat,
    filter: EnvFilter,
    role: &str,
    id: &str,
    writer: BoxMakeWriter,
) -> Box<dyn Subscriber + Send + Sync> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false);
    match format {
        LogFormat::Text => {
            let tag = format!("{role}-{id}");
            let inner = tracing_subscriber::fmt::format();
            Box::new(builder.event_format(Tagged { tag, inner }).finish())
        }
        LogFormat::Json => {
            let fields = format!("\"role\":{},\"id\":{}", json_string(role), json_string(id));
            let inner = tracing_subscriber::fmt::format().json();
            Box::new(
                builder
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(TaggedJson { fields, inner })
                    .finish(),
            )
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `template` with `{pid}` replaced by this process's id: one log file per process.
pub fn per_process(template: &Path) -> std::path::PathBuf {
    template
        .to_string_lossy()
        .replace("{pid}", &std::process::id().to_string())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A log file passing its size is rotated: the current file keeps its name and starts
    /// afresh, older lines are in `.1`, `.2`, and no more than `kept` old files remain.
    #[test]
    fn log_files_rotate_by_size_and_keep_a_few() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.log");
        let mut f = rotating_file(&path, 1000, 2).unwrap();
        for i in 0..100 {
            writeln!(f, "line {i:03} {}", "x".repeat(90)).unwrap();
        }
        f.flush().unwrap();
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(
            size(&path) < 1200,
            "the current file started afresh: {}",
            size(&path)
        );
        assert!(size(&dir.path().join("w.log.1")) >= 1000);
        assert!(size(&dir.path().join("w.log.2")) >= 1000);
        assert!(
            !dir.path().join("w.log.3").exists(),
            "only two old files are kept"
        );
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(
            last.contains("line 099"),
            "the newest lines are in the current file"
        );
    }

    /// What a subscriber of `format` writes for one event inside a task's span and one outside
    /// any span.
    fn lines(format: LogFormat) -> Vec<String> {
        let buf: std::sync::Arc<Mutex<Vec<u8>>> = Default::default();
        let b = buf.clone();
        let writer = BoxMakeWriter::new(move || Capture(b.clone()));
        let sub = subscriber(format, EnvFilter::new("info"), "worker", "4711", writer);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(streams = 3, "outside any span");
            let span = tracing::info_span!("task", n = 1);
            let _e = span.enter();
            tracing::warn!("inside a span");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    struct Capture(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Every text line starts with the role and id; the filter applies.
    #[test]
    fn text_lines_carry_role_and_id() {
        let l = lines(LogFormat::Text);
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(l.iter().all(|l| l.starts_with("worker-4711 ")), "{l:?}");
        assert!(l[0].contains("outside any span") && l[0].contains("streams=3"));
    }

    /// Every JSON line is one valid JSON object whose `role` and `id` are set, inside a span or
    /// not, with the event's level, fields and message.
    #[test]
    fn json_lines_carry_role_and_id() {
        let l = lines(LogFormat::Json);
        assert_eq!(l.len(), 2, "{l:?}");
        for line in &l {
            assert!(
                line.starts_with("{\"role\":\"worker\",\"id\":\"4711\","),
                "{line}"
            );
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["role"], "worker");
            assert_eq!(v["id"], "4711");
        }
        assert!(l[0].contains("\"level\":\"INFO\"") && l[0].contains("\"streams\":3"));
        assert!(l[1].contains("\"message\":\"inside a span\""));
    }

    /// JSON strings are escaped.
    #[test]
    fn json_strings() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
