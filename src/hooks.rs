//! Runs `exec` lines: argv as given (macros filled in, no shell), output to
//! the log line by line, exit status checked against `ec`.

use std::process::Stdio;
use std::time::Duration;

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
        // The daemon's own line to systemd is not the hook's to use.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
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
    let output = async { tokio::join!(opt(out), opt(err)) };
    tokio::pin!(output);
    let mut output_done = false;
    let status = tokio::select! {
        status = child.wait() => status,
        // Output ended first: the exit follows.
        _ = &mut output => {
            output_done = true;
            child.wait().await
        }
    };
    let status = status.map_err(|e| format!("hook {argv:?}: waiting for it failed: {e}"))?;
    // A hook may leave a background process holding its stdout open (a
    // server started with `&`): forward what is already written, then move on.
    if !output_done {
        let _ = tokio::time::timeout(OUTPUT_GRACE, &mut output).await;
    }
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

/// How long output is still forwarded after a hook exits.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

async fn opt(f: Option<impl std::future::Future<Output = ()>>) {
    if let Some(f) = f {
        f.await;
    }
}

/// Logs each line; bytes that are not UTF-8 are shown replaced, never a
/// reason to stop reading (which would kill the hook with SIGPIPE).
async fn forward(stream: impl AsyncRead + Unpin, scope: Scope<'_>, program: String) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::info!("[{}] {} {program}: {text}", scope.domain, scope.event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn blocks(exec: &str) -> Vec<ExecBlock> {
        let text = format!(r#"{{ "domains": {{ "d": {{ "exec": {exec} }} }} }}"#);
        Config::from_text("t", &text).unwrap().domains[0]
            .exec
            .clone()
    }

    async fn run_started(exec: &str) -> Result<(), Vec<String>> {
        let blocks = blocks(exec);
        let scope = Scope {
            domain: "d",
            event: Event::Started,
        };
        let chosen = blocks
            .iter()
            .filter(|b| b.runs_on(Event::Started))
            .collect();
        run(chosen, scope, &MacroValues::default(), OnFailure::Stop).await
    }

    #[tokio::test]
    async fn background_process_holding_stdout_does_not_hold_the_daemon() {
        let started = std::time::Instant::now();
        run_started(r#"[{ "lines": [{ "argv": ["/bin/sh", "-c", "sleep 20 & echo started"] }] }]"#)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "waited for the background process"
        );
    }

    #[tokio::test]
    async fn output_that_is_not_utf8_does_not_kill_the_hook() {
        run_started(r#"[{ "lines": [{ "argv": ["/bin/sh", "-c", "printf '\\377\\n'; sleep 0.2; echo after"] }] }]"#)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn exit_codes_and_order() {
        let err = run_started(
            r#"[{ "on": ["started"], "lines": [
                { "argv": ["/bin/sh", "-c", "exit 3"], "ec": "0-3" },
                { "argv": ["/bin/sh", "-c", "exit 4"], "ec": "0-3" },
                { "argv": ["/bin/never-runs"] } ] }]"#,
        )
        .await
        .unwrap_err();
        assert_eq!(err.len(), 1, "stops at the first failure: {err:?}");
        assert!(err[0].contains("exited with 4 (success is 0-3)"), "{err:?}");
    }

    #[tokio::test]
    async fn shutdown_runs_every_line() {
        let blocks = blocks(
            r#"[{ "lines": [{ "argv": ["/bin/false"] }, { "argv": ["/nonexistent/hook"] }] }]"#,
        );
        let scope = Scope {
            domain: "d",
            event: Event::Interrupted,
        };
        let err = run(
            blocks.iter().collect(),
            scope,
            &MacroValues::default(),
            OnFailure::Continue,
        )
        .await
        .unwrap_err();
        assert_eq!(err.len(), 2, "{err:?}");
        assert!(err[1].contains("could not start"), "{err:?}");
    }
}
