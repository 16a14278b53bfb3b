//! Runs `exec` lines: argv as given (macros filled in, no shell), output to
//! the log line by line, exit status checked against `ec`.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use crate::config::{Event, ExecBlock, ExecLine, MacroValues};

/// What to do after a line fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Bring-up: the first failure ends the run.
    Stop,
    /// Shutdown: every line still gets its chance; failures are collected.
    Continue,
}

/// Where hooks run: which domain and event, for log lines and errors.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub domain: &'a str,
    pub event: Event,
}

/// Runs the lines of `blocks`, in order; the caller picks the blocks bound
/// to `scope.event`.
pub async fn run(
    blocks: Vec<&ExecBlock>,
    scope: Scope<'_>,
    values: &MacroValues,
    on_failure: OnFailure,
) -> Result<(), Vec<String>> {
    let mut failures = Vec::new();
    for block in blocks {
        for line in &block.lines {
            if let Err(e) = run_line(line, scope, values).await {
                tracing::error!("[{}] {}: {e}", scope.domain, scope.event);
                failures.push(e);
                if on_failure == OnFailure::Stop {
                    return Err(failures);
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

async fn run_line(line: &ExecLine, scope: Scope<'_>, values: &MacroValues) -> Result<(), String> {
    let argv: Vec<String> = line.argv.iter().map(|t| t.render(values)).collect();
    let program = &argv[0];
    tracing::info!("[{}] {}: running {:?}", scope.domain, scope.event, argv);
    let mut child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("hook {argv:?} could not start: {e}"))?;
    let out = child
        .stdout
        .take()
        .map(|s| forward(s, scope, program.clone()));
    let err = child
        .stderr
        .take()
        .map(|s| forward(s, scope, program.clone()));
    let (status, _, _) = tokio::join!(child.wait(), opt(out), opt(err));
    let status = status.map_err(|e| format!("hook {argv:?}: waiting for it failed: {e}"))?;
    match status.code() {
        Some(code) if line.ec.accepts(code) => Ok(()),
        Some(code) => Err(format!(
            "hook {argv:?} exited with {code} (success is {})",
            line.ec
        )),
        None => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or(0);
            Err(format!("hook {argv:?} was killed by signal {signal}"))
        }
    }
}

async fn opt(f: Option<impl std::future::Future<Output = ()>>) {
    if let Some(f) = f {
        f.await;
    }
}

async fn forward(stream: impl AsyncRead + Unpin, scope: Scope<'_>, program: String) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!("[{}] {} {program}: {line}", scope.domain, scope.event);
    }
}
