//! The log of a long-running sealgate process (`serve`): tracing-subscriber with `[logging]`'s
//! filter (`SEALGATE_LOG` overrides it), as readable lines or one JSON object per line (the
//! event's fields at the top level, so an access line is `{"timestamp", "level", "target":
//! "sealgate::access", "client", "method", …}`), to standard error or to a file that rotates
//! daily or hourly (tracing-appender; written by a background thread, so a slow disk never
//! blocks a request).

use sealgate_config::{LogFormat, Rotation};
use std::path::Path;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Keeps the file writer's thread alive; dropping it flushes what is buffered.
#[must_use = "the log file is flushed and closed when this is dropped"]
#[derive(Debug)]
pub struct LogGuard {
    _worker: Option<WorkerGuard>,
}

/// Installs the process's subscriber: the filter `level` (or `SEALGATE_LOG`), `format`, and
/// `file` (with its rotation) or standard error. Fails if the file's directory is unusable
/// or a subscriber is already installed.
pub fn init(
    level: &str,
    format: LogFormat,
    file: Option<(&Path, Rotation)>,
) -> Result<LogGuard, String> {
    let filter = match std::env::var("SEALGATE_LOG") {
        Ok(from_env) => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("SEALGATE_LOG {from_env:?} is not a log filter: {e}"))?,
        Err(_) => EnvFilter::try_new(level)
            .map_err(|e| format!("logging.level {level:?} is not a log filter: {e}"))?,
    };
    let (writer, worker, ansi) = match file {
        None => (
            BoxMakeWriter::new(std::io::stderr),
            None,
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ),
        Some((path, rotation)) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .ok_or_else(|| format!("logging.file {} names no file", path.display()))?;
            let rotation = match rotation {
                Rotation::Daily => tracing_appender::rolling::Rotation::DAILY,
                Rotation::Hourly => tracing_appender::rolling::Rotation::HOURLY,
                Rotation::Never => tracing_appender::rolling::Rotation::NEVER,
            };
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix(name.to_string_lossy())
                .build(dir)
                .map_err(|e| format!("logging.file {}: {e}", path.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (BoxMakeWriter::new(writer), Some(guard), false)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(LogGuard { _worker: worker })
}
