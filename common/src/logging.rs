//! Logging set-up for every chatfeed binary: `tracing` with `RUST_LOG`-style filters, text or JSON.
//! Text lines start with the process's role and id (`master-2`, `worker-4711`), which matters where
//! several processes share a log file.

use std::fmt;
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Output format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
/// unset. Text lines start with `role-id`; in JSON, the returned span (to be entered by the
/// caller) carries them, on the lines of the tasks that run inside it.
pub fn init(
    format: LogFormat,
    default_filter: &str,
    role: &'static str,
    id: &str,
) -> tracing::Span {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a test binary may call this more than once.
    match format {
        LogFormat::Text => {
            let tag = format!("{role}-{id}");
            let inner = tracing_subscriber::fmt::format();
            let _ = builder
                .with_ansi(false)
                .event_format(Tagged { tag, inner })
                .try_init();
            tracing::Span::none()
        }
        LogFormat::Json => {
            let _ = builder.json().try_init();
            tracing::info_span!("proc", role, id = %id)
        }
    }
}
